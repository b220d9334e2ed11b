"""The operator's tooling, above everything it starts: the ``movierec`` CLI, the local stack, the demo,
the HTTP client, synthetic data."""
