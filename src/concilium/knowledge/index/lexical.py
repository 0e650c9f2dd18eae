"""BM25 over chunks with tantivy, analysed per language (English and French stemming and
stop words; other languages lower-cased and accent-folded only)."""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path

import tantivy

__all__ = ["LexicalIndex"]

_FIELDS = {"en": "text_en", "fr": "text_fr"}
_DEFAULT_FIELD = "text_std"
_QUERY_SPECIAL = re.compile(r'[+\-&|!(){}\[\]^"~*?:\\/<>=]')
_HEAP = 64 * 1024 * 1024


def _analyzer(language: str | None) -> tantivy.TextAnalyzer:
    builder = (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(60))
        .filter(tantivy.Filter.lowercase())
    )
    if language is not None:
        builder = builder.filter(tantivy.Filter.stopword(language)).filter(
            tantivy.Filter.stemmer(language)
        )
    return builder.filter(tantivy.Filter.ascii_fold()).build()


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_integer_field("chunk_id", stored=True, indexed=True, fast=True)
    for field in (*_FIELDS.values(), _DEFAULT_FIELD):
        builder.add_text_field(field, stored=False, tokenizer_name=field)
    return builder.build()


class LexicalIndex:
    """One tantivy index in ``path``; writes are serialised, searches run concurrently."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.index = tantivy.Index(_schema(), path=str(path), reuse=True)
        self.index.register_tokenizer("text_en", _analyzer("english"))
        self.index.register_tokenizer("text_fr", _analyzer("french"))
        self.index.register_tokenizer(_DEFAULT_FIELD, _analyzer(None))
        self._lock = threading.Lock()

    def apply(self, adds: Iterable[tuple[int, str, str | None]], removes: Iterable[int]) -> None:
        """Remove then (re)add chunks: idempotent, so replaying an operation is harmless."""
        adds = list(adds)
        with self._lock:
            writer = self.index.writer(_HEAP, 1)
            try:
                for chunk_id in [*removes, *(a[0] for a in adds)]:
                    writer.delete_documents_by_term("chunk_id", chunk_id)
                for chunk_id, text, language in adds:
                    field = _FIELDS.get(language or "", _DEFAULT_FIELD)
                    writer.add_document(tantivy.Document(chunk_id=chunk_id, **{field: text}))
                writer.commit()
                writer.wait_merging_threads()
            except BaseException:
                writer.rollback()
                raise
        self.index.reload()

    def clear(self) -> None:
        with self._lock:
            writer = self.index.writer(_HEAP, 1)
            writer.delete_all_documents()
            writer.commit()
            writer.wait_merging_threads()
        self.index.reload()

    @property
    def count(self) -> int:
        return int(self.index.searcher().num_docs)

    def search(self, query: str, limit: int) -> list[tuple[int, float]]:
        """(chunk id, BM25 score), best first. The query is plain words, never syntax."""
        words = _QUERY_SPECIAL.sub(" ", query).strip()
        if not words or limit <= 0:
            return []
        parsed, _errors = self.index.parse_query_lenient(words, [*_FIELDS.values(), _DEFAULT_FIELD])
        searcher = self.index.searcher()
        hits = searcher.search(parsed, limit, count=False).hits
        results = []
        for score, address in hits:
            document = searcher.doc(address)
            results.append((int(document["chunk_id"][0]), float(score)))
        return results

    def destroy(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
