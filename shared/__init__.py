"""What the API and the workers share, one sub-package per concern; nothing here imports api, workers or cli.

From the bottom floor up (tests/unit/test_layers.py holds each to the floors below it):

errors.py the one error tree
infra/    settings, Redis connections, the key schema, the broker, durability, the clock, metric names
ml/       pure data and model code: numpy and torch in, numpy out, no Redis
store/    what lives in Redis beside jobs: artifacts, datasets, models, feedback, cached vectors
jobs/     the job system: records, submission, the kind table and the Celery app, leases, the sharded-job frame
logic/    the composition layer: serving, versions, mining, encoding, batch, evaluation, pipelines, and the
          services one process uses
"""
