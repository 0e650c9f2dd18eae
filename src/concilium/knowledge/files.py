"""Original files, kept content-addressed under ``<data_dir>/files`` (identical uploads are
stored once; a path never changes meaning)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["FileStore"]


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, data: bytes) -> tuple[str, str]:
        """Store ``data``; (sha256, path relative to the root). Atomic and idempotent."""
        digest = hashlib.sha256(data).hexdigest()
        relative = f"{digest[:2]}/{digest}"
        target = self.root / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{digest}.{os.getpid()}.tmp")
            with tmp.open("wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        return digest, relative

    def read(self, relative: str) -> bytes:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"{relative!r} is outside the file store")
        return path.read_bytes()
