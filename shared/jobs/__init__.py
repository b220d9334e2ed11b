"""The job system: job records and their state machine, submission, the job-kind table, leases, pipelines."""
