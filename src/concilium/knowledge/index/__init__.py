"""Search indexes, derived from the database and rebuilt or replayed from it.

The retriever and the index manager use these protocols; tantivy (``LexicalIndex``) and
usearch (``VectorIndex``) are the default implementations, chosen in ``IndexManager``.
Both are idempotent caches of the database: any implementation may be dropped and rebuilt.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

__all__ = ["LexicalSearch", "Precision", "VectorSearch"]

Precision = Literal["f32", "f16", "i8"]


class LexicalSearch(Protocol):
    """Keyword search over chunk texts (BM25 or alike), keys are chunk ids."""

    @property
    def count(self) -> int: ...

    def apply(self, adds: Iterable[tuple[int, str, str | None]], removes: Iterable[int]) -> None:
        """Remove, then (re)add ``(chunk id, text, language)``: replaying is harmless."""
        ...

    def clear(self) -> None: ...

    def search(self, query: str, limit: int) -> list[tuple[int, float]]:
        """(chunk id, score), best first; the query is plain words, never syntax."""
        ...


class VectorSearch(Protocol):
    """Nearest neighbours by cosine similarity over chunk vectors, keys are chunk ids."""

    dim: int
    precision: Precision

    @property
    def count(self) -> int: ...

    def apply(self, adds: Iterable[tuple[int, np.ndarray]], removes: Iterable[int]) -> None:
        """Idempotent like the lexical index: a key present is replaced."""
        ...

    def save(self) -> None:
        """Persist (what ``open`` reads back); a no-op for an index kept elsewhere."""
        ...

    def clear(self) -> None: ...

    def search(self, vector: np.ndarray, limit: int) -> list[tuple[int, float]]:
        """(chunk id, cosine similarity), best first."""
        ...


class LexicalFactory(Protocol):
    def __call__(self, path: Path) -> LexicalSearch: ...


class VectorFactory(Protocol):
    def __call__(self, path: Path, dim: int, precision: Precision) -> VectorSearch: ...
