"""The blob store seam: the local folder, and a store with no local files (an object store's
shape) through ingestion and the original-file download."""

from __future__ import annotations

from pathlib import Path

import pytest

from concilium.auth.principal import OPERATOR
from concilium.knowledge.service import Upload
from concilium.store.blobs import LocalBlobStore
from tests.knowledge.conftest import KnowledgeFactory


def test_the_local_store_is_content_addressed_and_stays_inside(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "files")
    digest, key = store.put(b"hello")
    assert store.put(b"hello") == (digest, key)  # stored once
    assert key == f"{digest[:2]}/{digest}"
    assert store.get(key) == b"hello"
    assert store.local_path(key) == (tmp_path / "files" / key).resolve()
    with pytest.raises(KeyError):
        store.get("ab/missing")
    with pytest.raises(KeyError):
        store.get("../../etc/passwd")


class MemoryBlobStore:
    """Blobs held in memory, with no local file: what an object store looks like."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def put(self, data: bytes) -> tuple[str, str]:
        import hashlib

        digest = hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest, digest

    def get(self, key: str) -> bytes:
        return self.blobs[key]

    def local_path(self, key: str) -> Path | None:
        return None


async def test_ingestion_and_originals_work_without_local_files(
    make_knowledge: KnowledgeFactory,
) -> None:
    knowledge = await make_knowledge()
    store = MemoryBlobStore()
    knowledge.service.files = store
    knowledge.service.runner.files = store
    cid = await knowledge.collection()
    job = await knowledge.service.ingest(
        OPERATOR, cid, [Upload("boiler.md", b"# Boiler\n\nServiced every October.\n")]
    )
    assert (await knowledge.run(job.id)).progress.indexed == 1
    assert not (knowledge.settings.data_dir / "files").exists()
    [(document, _, _)], _ = await knowledge.service.list_documents(OPERATOR, cid)
    _, original = await knowledge.service.original(OPERATOR, document.id)
    assert original == b"# Boiler\n\nServiced every October.\n"
