"""A worker or scheduler process for the contract tests: the real thing, in a process of
its own, on the test's database. Each run of a job appends ``<job id> <pid>`` to a file."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from concilium.jobs import DatabaseQueue, JobContext, Schedule, Scheduler, Worker
from concilium.store.db import Database
from concilium.store.models import new_id


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("worker", "scheduler"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--search-path")
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--work", type=float, default=0.05, help="seconds each job takes")
    parser.add_argument("--every", type=float, default=1.0, help="the schedule's tick")
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(run(args))


async def run(args: argparse.Namespace) -> None:
    connect_args = (
        {"server_settings": {"search_path": args.search_path}} if args.search_path else {}
    )
    db = Database(args.url, connect_args=connect_args)
    queue = DatabaseQueue(db)
    owner = new_id()

    async def record(context: JobContext) -> None:
        with args.log.open("a") as log:
            log.write(f"{context.job.id} {os.getpid()}\n")
        context.report(pid=os.getpid())
        await asyncio.sleep(args.work)

    if args.role == "worker":
        worker = Worker(
            queue,
            owner,
            {"contract.record": record, "contract.tick": record},
            lease=args.lease,
            poll=0.1,
            concurrency=args.concurrency,
        )
        worker.start()
    else:
        scheduler = Scheduler(
            db,
            queue,
            owner,
            [Schedule("contract", args.every, "contract.tick")],
            lease=args.lease,
        )
        scheduler.start()
    print("ready", flush=True)
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    main()
