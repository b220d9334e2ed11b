"""Celery workers: ``cpu`` tasks (ingest, mining, index, recommendations, batch, evaluation) and ``gpu`` tasks
(encode, train).

Tasks are thin: they take ids and small JSON, move their job through the registry, call the composition layer
(``shared.logic``), and return a small summary. ``workers.base.run_job`` is the frame of a job's main task,
``workers.sharded`` that of a shard and a join, ``workers.base.run_step`` that of a pipeline's or an
evaluation's step; ``workers.janitor`` sends lost work again; ``workers.main`` starts a worker.
"""
