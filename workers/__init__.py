"""Celery workers: ``cpu`` tasks (ingest, mining, index, recommendations) and ``gpu`` tasks (encode, train).

Tasks are thin: they take ids and small JSON, move their job through the registry, call pure code in
``shared``, store artifacts and return a small summary. ``workers.base.job_task`` holds that common frame.
"""
