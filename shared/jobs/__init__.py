"""The job system: job records and their state machine, submission, the job-kind table and the Celery app it
routes, leases, the sharded-job frame and progress."""
