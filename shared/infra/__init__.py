"""Process plumbing: settings, Redis connections, the key schema, the Celery app and its broker, durability."""
