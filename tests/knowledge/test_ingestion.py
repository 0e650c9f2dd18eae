"""Ingestion end to end: real parsers, chunker, embedder, database and indexes."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select

from concilium.auth.principal import OPERATOR
from concilium.bus import DocumentAdded, DocumentRemoved, DocumentUpdated, DomainEvent
from concilium.errors import Conflict, InvalidRequest, NotFound
from concilium.knowledge.index.manager import IndexManager
from concilium.knowledge.search import Filters
from concilium.knowledge.service import Upload
from concilium.store.models import ChunkRecord, Collection, DocumentVersion, IndexOp
from tests.knowledge.conftest import Knowledge
from tests.support.documents import write_mixed_folder


async def _live_chunks(k: Knowledge, collection_id: str) -> int:
    async with k.db.reader() as s:
        return int(
            await s.scalar(
                select(func.count()).where(
                    ChunkRecord.collection_id == collection_id, ChunkRecord.retired.is_(False)
                )
            )
            or 0
        )


async def test_mixed_folder_ingests_with_one_clear_error(knowledge: Knowledge, tmp_path: Path):
    facts = write_mixed_folder(tmp_path / "mixed")
    cid = await knowledge.collection()
    job = await knowledge.service.ingest_paths(OPERATOR, cid, [tmp_path / "mixed"])
    report = await knowledge.run(job.id)

    assert report.job.status == "completed"
    assert report.progress.indexed == len(facts)
    assert report.progress.failed == 1
    [failure] = report.failures
    assert failure.source.endswith("broken.pdf")
    assert failure.reason == "corrupt"
    assert failure.error

    documents, total = await knowledge.service.list_documents(OPERATOR, cid)
    assert total == len(facts)
    by_name = {Path(d.source).name: (d, v) for d, v, _ in documents}
    assert by_name["rapport.pdf"][0].language == "fr"
    assert by_name["scan.pdf"][1] is not None
    assert by_name["scan.pdf"][1].ocr_pages == [1]
    assert report.chunks == await _live_chunks(knowledge, cid)

    # Every document is findable by its own fact, with a location for the citation.
    for name, fact in facts.items():
        hits = await knowledge.service.search(OPERATOR, fact, [cid])
        assert hits, name
        assert any(Path(h.source).name == name and fact in h.text for h in hits[:3]), name
    [hit] = list(await knowledge.service.search(OPERATOR, "precipitations millimetres", [cid]))[:1]
    assert Path(hit.source).name == "rapport.pdf"
    # Both short pages fit one chunk: it cites the range.
    assert (hit.page, hit.page_end, hit.location) == (1, 2, "pp. 1-2")


async def test_versions_identical_content_is_noop_and_changes_retire_old_chunks(
    knowledge: Knowledge,
):
    cid = await knowledge.collection()
    first = await knowledge.service.ingest(
        OPERATOR, cid, [Upload("menu.md", b"# Menu\n\nLa soupe du jour est au potiron.\n")]
    )
    assert (await knowledge.run(first.id)).progress.indexed == 1

    same = await knowledge.service.ingest(
        OPERATOR, cid, [Upload("menu.md", b"# Menu\n\nLa soupe du jour est au potiron.\n")]
    )
    report = await knowledge.run(same.id)
    assert report.progress.skipped == 1
    assert report.progress.indexed == 0

    changed = await knowledge.service.ingest(
        OPERATOR, cid, [Upload("menu.md", b"# Menu\n\nLa soupe du jour est aux lentilles.\n")]
    )
    assert (await knowledge.run(changed.id)).progress.indexed == 1

    [(document, current, chunks)], _ = await knowledge.service.list_documents(OPERATOR, cid)
    _, versions = await knowledge.service.document(OPERATOR, document.id)
    assert [v.number for v in versions] == [2, 1]
    assert [v.status for v in versions] == ["active", "retired"]
    assert current is not None
    assert current.number == 2
    assert chunks == 1
    old = await knowledge.service.chunks(OPERATOR, document.id, versions[1].id)
    assert old
    assert all(c.retired for c in old)

    hits = await knowledge.service.search(OPERATOR, "soupe potiron lentilles", [cid])
    assert [h.version for h in hits] == [2]
    assert "lentilles" in hits[0].text
    assert await _live_chunks(knowledge, cid) == 1


async def test_documents_added_updated_and_removed_are_told_on_the_bus(knowledge: Knowledge):
    heard: list[DomainEvent] = []
    knowledge.service.bus.subscribe(heard.append)
    cid = await knowledge.collection()
    for text in (b"# Menu\n\nPotiron.\n", b"# Menu\n\nPotiron.\n", b"# Menu\n\nLentilles.\n"):
        await knowledge.run(
            (await knowledge.service.ingest(OPERATOR, cid, [Upload("m.md", text)])).id
        )
    [(document, current, _)], _ = await knowledge.service.list_documents(OPERATOR, cid)
    await knowledge.service.delete_document(OPERATOR, document.id)
    await knowledge.service.bus.drain()
    assert [type(e) for e in heard] == [DocumentAdded, DocumentUpdated, DocumentRemoved]
    assert current is not None
    assert heard[1] == DocumentUpdated(
        collection_id=cid, document_id=document.id, version_id=current.id, at=heard[1].at
    )


async def test_an_unfinished_job_without_a_live_queue_entry_is_requeued(knowledge: Knowledge):
    """The entry finished (a retry raced it) or was never written (a crash between the
    two commits): reconciliation, at start and every minute, queues it again."""
    cid = await knowledge.collection()
    job = await knowledge.service.ingest(OPERATOR, cid, [Upload("a.txt", b"Boiler in October.")])
    queue = knowledge.service.queue
    entry = await queue.find(f"ingest:{job.id}")
    assert entry is not None
    assert await knowledge.service.reconcile() == 0
    claimed = await queue.claim("gone", [entry.kind], lease=30)
    assert claimed is not None
    assert await queue.complete(claimed, "gone")  # done, though the ingestion is not
    assert await knowledge.service.reconcile() == 1
    assert (await queue.find(f"ingest:{job.id}")).status == "queued"  # type: ignore[union-attr]
    assert await knowledge.service.worker.run_one()
    assert (await knowledge.service.job(OPERATOR, job.id)).job.status == "completed"


async def test_delete_document_leaves_the_indexes(knowledge: Knowledge):
    cid = await knowledge.collection()
    job = await knowledge.service.ingest(
        OPERATOR,
        cid,
        [
            Upload("a.txt", b"Le phare de Kerbel mesure 52 metres."),
            Upload("b.txt", b"Le moulin de Kerbel date de 1820."),
        ],
    )
    await knowledge.run(job.id)
    [hit] = (await knowledge.service.search(OPERATOR, "phare Kerbel metres", [cid]))[:1]
    await knowledge.service.delete_document(OPERATOR, hit.document_id)
    hits = await knowledge.service.search(OPERATOR, "phare Kerbel metres", [cid])
    assert hits
    assert all(h.document_id != hit.document_id for h in hits)
    with pytest.raises(NotFound):
        await knowledge.service.document(OPERATOR, hit.document_id)


async def test_indexes_rebuild_from_the_database(knowledge: Knowledge):
    cid = await knowledge.collection()
    texts = [
        f"Fiche {i}: la piece numero {i} est rangee dans le tiroir {i * 7}." for i in range(30)
    ]
    job = await knowledge.service.ingest(
        OPERATOR, cid, [Upload(f"f{i}.txt", t.encode()) for i, t in enumerate(texts)]
    )
    await knowledge.run(job.id)
    before = await knowledge.service.search(OPERATOR, "tiroir 91", [cid])

    # Lose the index directory entirely: the next search rebuilds it from the database.
    knowledge.service.indexes._open.clear()
    shutil.rmtree(knowledge.settings.data_dir / "indexes")
    after = await knowledge.service.search(OPERATOR, "tiroir 91", [cid])
    assert [h.chunk_id for h in after] == [h.chunk_id for h in before]
    assert "tiroir 91" in after[0].text


async def test_processes_sharing_the_index_directory_take_turns(knowledge: Knowledge):
    """The server and ``concilium ingest`` (or a worker) on one data dir each keep the
    indexes in step: their catch-ups never hold two tantivy writers at once."""
    cid = await knowledge.collection()
    texts = [f"Note {i}: le carton {i} contient les cables du bureau {i % 5}." for i in range(40)]
    job = await knowledge.service.ingest(
        OPERATOR, cid, [Upload(f"n{i}.txt", t.encode()) for i, t in enumerate(texts)]
    )
    await knowledge.run(job.id)
    shutil.rmtree(knowledge.settings.data_dir / "indexes")
    others = [
        IndexManager(
            knowledge.settings.data_dir / "indexes", knowledge.db, knowledge.service.embedders.dim
        )
        for _ in range(3)
    ]
    async with knowledge.db.reader() as s:
        collection = await s.get(Collection, cid)
    assert collection is not None
    caught_up = await asyncio.gather(*(manager.current(collection) for manager in others))
    assert {index.lexical.count for index in caught_up} == {len(texts)}


async def test_embedder_change_reembeds_then_switches(knowledge: Knowledge):
    cid = await knowledge.collection(embedder="use-m3")
    job = await knowledge.service.ingest(
        OPERATOR,
        cid,
        [
            Upload("chat.txt", b"Le chat dort sur le canape du salon."),
            Upload("velo.txt", b"Le velo rouge est range dans le garage."),
        ],
    )
    await knowledge.run(job.id)
    collection, reembed = await knowledge.service.update_collection(
        OPERATOR, cid, embedder="static"
    )
    assert reembed is not None
    assert collection.state == "reembedding"
    # Until the job ends, searches use the old vectors.
    assert (await knowledge.service.collection(OPERATOR, cid)).embedder == "use-m3"
    assert (await knowledge.run(reembed.id)).job.status == "completed"
    collection = await knowledge.service.collection(OPERATOR, cid)
    assert (collection.embedder, collection.state, collection.pending_embedder) == (
        "static",
        "ready",
        None,
    )
    hits = await knowledge.service.search(OPERATOR, "velo garage", [cid], options={"mode": "dense"})
    assert hits[0].source == "velo.txt"
    async with knowledge.db.reader() as s:
        assert await s.scalar(select(func.count()).where(IndexOp.op == "reset")) == 1


async def test_cancel_drops_unfinished_files_and_retry_requeues_failures(knowledge: Knowledge):
    cid = await knowledge.collection()
    job = await knowledge.service.ingest(
        OPERATOR, cid, [Upload("ok.txt", b"Un texte correct."), Upload("bad.pdf", b"not a pdf")]
    )
    report = await knowledge.run(job.id)
    assert (report.progress.indexed, report.progress.failed) == (1, 1)
    with pytest.raises(Conflict):
        await knowledge.service.cancel_job(OPERATOR, job.id)
    report = await knowledge.service.retry_job(OPERATOR, job.id)
    assert report.job.status == "queued"
    assert report.progress.queued == 1
    report = await knowledge.run(job.id)
    assert report.job.status == "completed"
    assert report.progress.failed == 1

    pending = await knowledge.service.ingest(OPERATOR, cid, [Upload("later.txt", b"Plus tard.")])
    report = await knowledge.service.cancel_job(OPERATOR, pending.id)
    assert report.job.status == "cancelled"
    assert report.progress.cancelled == 1
    await knowledge.run(pending.id)  # a cancelled job does nothing
    async with knowledge.db.reader() as s:
        assert await s.scalar(select(func.count()).select_from(DocumentVersion)) == 1


async def test_oversized_and_missing_inputs(knowledge: Knowledge, tmp_path: Path):
    cid = await knowledge.collection()
    limit = knowledge.settings.knowledge.max_file_bytes
    job = await knowledge.service.ingest(
        OPERATOR, cid, [Upload("huge.txt", b"a" * (limit + 1)), Upload("small.txt", b"petit texte")]
    )
    report = await knowledge.run(job.id)
    assert report.progress.indexed == 1
    assert [(f.source, f.reason) for f in report.failures] == [("huge.txt", "too_large")]
    with pytest.raises(InvalidRequest):
        await knowledge.service.ingest_paths(OPERATOR, cid, [tmp_path / "nowhere"])


async def test_filters_narrow_the_search(knowledge: Knowledge):
    cid = await knowledge.collection()
    job = await knowledge.service.ingest(
        OPERATOR,
        cid,
        [Upload("fr.txt", b"Le port de Brest accueille des navires.")],
        tags=["ports"],
    )
    await knowledge.run(job.id)
    job = await knowledge.service.ingest(
        OPERATOR, cid, [Upload("en.txt", b"The port of Brest welcomes many ships every day.")]
    )
    await knowledge.run(job.id)
    everything = await knowledge.service.search(OPERATOR, "port Brest", [cid])
    assert {h.source for h in everything} == {"fr.txt", "en.txt"}
    tagged = await knowledge.service.search(
        OPERATOR, "port Brest", [cid], filters=Filters(tags=frozenset({"ports"}))
    )
    assert [h.source for h in tagged] == ["fr.txt"]
    english = await knowledge.service.search(
        OPERATOR, "port Brest", [cid], filters=Filters(languages=frozenset({"en"}))
    )
    assert [h.source for h in english] == ["en.txt"]
