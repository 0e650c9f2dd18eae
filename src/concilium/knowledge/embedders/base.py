"""What an embedder is: text → unit vectors, for queries and for passages."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np

__all__ = ["Embedder", "TextKind", "normalize"]

TextKind = Literal["query", "passage"]


def normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    normalized: np.ndarray = vectors / np.maximum(norms, 1e-12)
    return normalized


class Embedder(ABC):
    """Synchronous and CPU-bound: callers run ``embed`` in a worker thread."""

    name: ClassVar[str]
    dim: ClassVar[int]
    multilingual: ClassVar[bool] = False
    #: Texts longer than this (in the model's tokens) are truncated by the model.
    max_tokens: ClassVar[int] = 512
    batch_size: ClassVar[int] = 32
    #: Cosine similarity under which a passage is unrelated to a query, measured on the
    #: evaluation sets (the default ``min_score`` of grounded answers); 0 = not measured.
    relevance_floor: ClassVar[float] = 0.0

    @abstractmethod
    def embed(self, texts: Sequence[str], kind: TextKind) -> np.ndarray:
        """One L2-normalised float32 row per text."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model."""
