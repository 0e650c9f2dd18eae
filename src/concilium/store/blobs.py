"""Where original files live: the ``BlobStore`` seam and its default, a local folder.

Blobs are content-addressed (the key holds the SHA-256 of the bytes): identical uploads are
stored once, and a key never changes meaning, so replicas can share a store safely. An
object store (S3-compatible, say) implements the same three methods; ``local_path`` is
then None, and readers take the bytes instead.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

__all__ = ["BlobStore", "LocalBlobStore"]


class BlobStore(Protocol):
    def put(self, data: bytes) -> tuple[str, str]:
        """Store ``data``: (its sha256, its key). Atomic and idempotent."""
        ...

    def get(self, key: str) -> bytes:
        """The bytes under ``key`` (``KeyError`` if there are none)."""
        ...

    def local_path(self, key: str) -> Path | None:
        """A file on this machine holding the blob, when the store has one (served and
        parsed from there without a copy)."""
        ...


class LocalBlobStore:
    """Blobs under ``root/<2 hex>/<sha256>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, data: bytes) -> tuple[str, str]:
        digest = hashlib.sha256(data).hexdigest()
        key = f"{digest[:2]}/{digest}"
        target = self.root / key
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{digest}.{os.getpid()}.tmp")
            with tmp.open("wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        return digest, key

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise KeyError(f"{key!r} is outside the blob store")
        return path

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise KeyError(key) from exc

    def local_path(self, key: str) -> Path | None:
        return self._path(key)
