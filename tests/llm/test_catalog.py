"""Assembling catalog models from the packages that carry their bytes."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from concilium.errors import ModelNotInstalled
from concilium.llm import catalog
from concilium.llm.catalog import CatalogModel


@pytest.fixture
def part_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Three installed packages shaped like the model-part packages (get_part_path())."""
    chunks = [b"GGUF" + bytes(range(256)) * 40, b"middle" * 1000, b"tail-bytes"]
    site = tmp_path / "site"
    for i, chunk in enumerate(chunks, start=1):
        pkg = site / f"fake_model_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(chunk)
        (pkg / "__init__.py").write_text(
            "import os\n"
            "def get_part_path():\n"
            f"    return os.path.join(os.path.dirname(__file__), 'data', 'part{i:02d}.bin')\n"
        )
    monkeypatch.syspath_prepend(str(site))
    yield chunks
    for i in range(1, 4):
        sys.modules.pop(f"fake_model_part{i}", None)


def _entry(chunks: list[bytes], sha: str | None = None) -> CatalogModel:
    whole = b"".join(chunks)
    return CatalogModel(
        name="fake",
        description="",
        filename="fake.gguf",
        sha256=sha or hashlib.sha256(whole).hexdigest(),
        size=len(whole),
        packages=(),
        modules=tuple(f"fake_model_part{i}" for i in range(1, 4)),
    )


def test_parts_are_joined_in_order_verified_and_marked(
    part_packages: list[bytes], tmp_path: Path
) -> None:
    entry = _entry(part_packages)
    seen: list[int] = []
    path = catalog.assemble(tmp_path / "models", entry, lambda done, total: seen.append(done))
    assert path.read_bytes() == b"".join(part_packages)
    assert catalog.is_assembled(tmp_path / "models", entry)
    assert seen[-1] == entry.size
    # idempotent: a second call does not rewrite the file
    mtime = path.stat().st_mtime_ns
    assert catalog.assemble(tmp_path / "models", entry) == path
    assert path.stat().st_mtime_ns == mtime


def test_a_hash_mismatch_leaves_nothing_behind(part_packages: list[bytes], tmp_path: Path) -> None:
    entry = _entry(part_packages, sha="0" * 64)
    with pytest.raises(ModelNotInstalled, match="does not match the pinned hash"):
        catalog.assemble(tmp_path / "models", entry)
    assert list((tmp_path / "models").iterdir()) == []


def test_a_missing_package_says_how_to_install(tmp_path: Path) -> None:
    entry = CatalogModel(
        name="ghost",
        description="",
        filename="g.gguf",
        sha256="0" * 64,
        size=1,
        packages=(),
        modules=("no_such_package_part1",),
    )
    assert not catalog.packages_installed(entry)
    with pytest.raises(ModelNotInstalled, match="concilium models pull ghost"):
        catalog.assemble(tmp_path, entry)


def test_a_truncated_model_file_is_not_taken_for_installed(
    part_packages: list[bytes], tmp_path: Path
) -> None:
    entry = _entry(part_packages)
    path = catalog.assemble(tmp_path, entry)
    path.write_bytes(path.read_bytes()[:-1])
    assert not catalog.is_assembled(tmp_path, entry)


def test_local_gguf_paths_are_accepted_and_other_names_rejected(tmp_path: Path) -> None:
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF")
    assert catalog.locate_model(tmp_path, str(gguf)) == gguf
    with pytest.raises(ModelNotInstalled):
        catalog.locate_model(tmp_path, str(tmp_path / "absent.gguf"))
    with pytest.raises(ModelNotInstalled):
        catalog.locate_model(tmp_path, "not-a-model")


def test_pinned_hashes_match_the_installed_test_model(models_dir: Path) -> None:
    entry = catalog.CATALOG["smollm2-135m"]
    assert catalog.sha256_file(catalog.model_file(models_dir, entry)) == entry.sha256
