"""Code shared by the API and the workers: settings, jobs, storage, and the pure data and model code."""
