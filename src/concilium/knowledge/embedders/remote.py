"""Any server speaking OpenAI's ``/v1/embeddings`` (vLLM, llama.cpp server, OpenAI, …)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from concilium.knowledge.embedders.base import Embedder, TextKind, normalize

__all__ = ["RemoteEmbedder", "RemoteEmbedderError"]


class RemoteEmbedderError(RuntimeError):
    pass


class RemoteEmbedder(Embedder):
    """Runs in a worker thread like every embedder, hence a blocking (stdlib) client."""

    name: ClassVar[str] = "remote"
    dim: ClassVar[int] = 0
    multilingual: ClassVar[bool] = True

    def __init__(
        self,
        name: str,
        base_url: str,
        model: str,
        dim: int,
        api_key: str | None = None,
        timeout: float = 60.0,
        query_prefix: str = "",
        passage_prefix: str = "",
    ) -> None:
        self.instance_name = name
        self.url = base_url.rstrip("/") + "/embeddings"
        self.model = model
        self.instance_dim = dim
        self.api_key = api_key
        self.timeout = timeout
        self.prefixes = {"query": query_prefix, "passage": passage_prefix}

    def embed(self, texts: Sequence[str], kind: TextKind) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.instance_dim), np.float32)
        body = json.dumps(
            {"model": self.model, "input": [self.prefixes[kind] + t for t in texts]}
        ).encode()
        request = urllib.request.Request(  # noqa: S310 - the URL is an http(s) backend's
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                payload: dict[str, Any] = json.loads(response.read())
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
            raise RemoteEmbedderError(f"{self.instance_name}: {exc}") from exc
        rows = sorted(payload.get("data", []), key=lambda d: d.get("index", 0))
        vectors = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
        if vectors.shape != (len(texts), self.instance_dim):
            raise RemoteEmbedderError(
                f"{self.instance_name}: expected {len(texts)}x{self.instance_dim} vectors, "
                f"got {vectors.shape}"
            )
        return normalize(vectors)
