"""Stores in Redis: artifacts (arrays and blobs), datasets, model versions, triplets, cached vectors."""
