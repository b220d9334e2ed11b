"""Process plumbing: settings, Redis connections, the key schema, kombu's transport, durability, per-process caches,
the clock, the metric names."""
