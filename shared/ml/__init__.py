"""Pure data and model code: numpy and torch in, numpy out; no Redis, no Celery."""
