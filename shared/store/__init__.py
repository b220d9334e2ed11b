"""Stores: what lives in Redis beside jobs, and nothing else: artifacts (arrays and blobs), dataset records and
arrays, model versions, feedback, cached string vectors. No store knows a model (shared/logic/ composes them)."""
