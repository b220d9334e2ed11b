"""The application layer: what combines stores, models and the job system (serving, versions, mining,
encoding, batch, evaluation, pipelines), above ``store/`` and ``ml/``, below ``workers/`` and ``api/``."""
