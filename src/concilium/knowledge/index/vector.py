"""Approximate nearest neighbours over chunk vectors with usearch (HNSW), cosine."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from usearch.index import Index

from concilium.knowledge.index import Precision

__all__ = ["Precision", "VectorIndex"]


class VectorIndex:
    """Keys are chunk ids. Saved to one file; the database holds the vectors it came from."""

    def __init__(self, path: Path, dim: int, precision: Precision = "f16") -> None:
        self.path = path
        self.dim = dim
        self.precision = precision
        self._lock = threading.Lock()
        self.index = self._new()
        if path.exists():
            self.index.load(str(path))
            if self.index.ndim != dim:  # another embedder's vectors: start over
                self.index = self._new()

    def _new(self) -> Index:
        return Index(
            ndim=self.dim,
            metric="cos",
            dtype=self.precision,
            connectivity=16,
            expansion_add=128,
            expansion_search=96,
        )

    @property
    def count(self) -> int:
        return len(self.index)

    def apply(self, adds: Iterable[tuple[int, np.ndarray]], removes: Iterable[int]) -> None:
        """Idempotent like the lexical index: a key present is replaced."""
        adds = list(adds)
        with self._lock:
            stale = [k for k in [*removes, *(a[0] for a in adds)] if k in self.index]
            if stale:
                self.index.remove(np.array(stale, dtype=np.uint64))
            if adds:
                keys = np.array([a[0] for a in adds], dtype=np.uint64)
                vectors = np.stack([a[1] for a in adds]).astype(np.float32)
                self.index.add(keys, vectors)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with self._lock:
            self.index.save(str(tmp))
        tmp.replace(self.path)

    def clear(self) -> None:
        with self._lock:
            self.index = self._new()

    def search(self, vector: np.ndarray, limit: int) -> list[tuple[int, float]]:
        """(chunk id, cosine similarity), best first."""
        if limit <= 0 or len(self.index) == 0:
            return []
        with self._lock:
            matches = self.index.search(vector.astype(np.float32), min(limit, len(self.index)))
        return [
            (int(key), 1.0 - float(distance))
            for key, distance in zip(matches.keys, matches.distances, strict=True)
        ]

    def destroy(self) -> None:
        self.path.unlink(missing_ok=True)
