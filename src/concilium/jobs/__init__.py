"""Background work shared by every process on one database: a job queue with leases,
workers, a scheduler with one leader, and the registry of live processes that owns them."""

from concilium.jobs.processes import ProcessRegistry
from concilium.jobs.queue import DatabaseQueue, Job, JobQueue, JobStatus
from concilium.jobs.scheduler import Schedule, Scheduler
from concilium.jobs.worker import Handler, JobContext, Worker

__all__ = [
    "DatabaseQueue",
    "Handler",
    "Job",
    "JobContext",
    "JobQueue",
    "JobStatus",
    "ProcessRegistry",
    "Schedule",
    "Scheduler",
    "Worker",
]
