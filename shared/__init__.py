"""What the API and the workers share, one sub-package per concern; nothing here imports api, workers or cli.

infra/   settings, Redis connections, the key schema, the Celery app and its broker, durability
jobs/    the job system: records and their state machine, submission, the job-kind table, leases, pipelines
store/   what lives in Redis beside jobs: artifacts, datasets, models, triplets, cached vectors
ml/      pure data and model code: numpy and torch in, numpy out, no Redis
errors.py the one error tree; services.py the Redis-backed services one process uses
"""
