"""processes, jobs, leases, message owner

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 06:00:00
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("owner_id", sa.String(length=32), nullable=True))
        batch.add_column(
            sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "processes",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_processes")),
    )
    op.create_index(op.f("ix_processes_heartbeat_at"), "processes", ["heartbeat_at"])
    jobs = op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("run_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(length=32), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("key", name=op.f("uq_jobs_key")),
    )
    op.create_index("ix_jobs_claim", "jobs", ["status", "kind", "run_after"])
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("holder", sa.String(length=32), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    # Unfinished ingestion jobs go on the queue, where a worker takes them up.
    unfinished = op.get_bind().execute(
        sa.text("SELECT id FROM ingest_jobs WHERE status IN ('queued', 'running')")
    )
    now = datetime.now(UTC)
    rows = [
        {
            "id": uuid.uuid4().hex,
            "kind": "knowledge.ingest",
            "key": f"ingest:{job_id}",
            "payload": {"ingest_job_id": job_id},
            "status": "queued",
            "priority": 0,
            "attempts": 0,
            "max_attempts": 3,
            "run_after": now,
            "cancel_requested": False,
            "created_at": now,
        }
        for (job_id,) in unfinished
    ]
    if rows:
        op.bulk_insert(jobs, rows)


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("jobs")
    op.drop_table("processes")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("cancel_requested")
        batch.drop_column("owner_id")
