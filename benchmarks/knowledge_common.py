"""Helpers shared by the benchmarks: machine description, BENCHMARKS.md sections (never
from a ``--quick`` run), memory figures and percentiles."""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import re
import resource
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

MiB = 1024 * 1024
#: The BEIR evaluation sets shipped with the benchmarks (CONCILIUM_EVAL_DIR: others).
EVAL_DIR = Path(os.environ.get("CONCILIUM_EVAL_DIR", REPO / "benchmarks" / "data" / "eval"))


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        memory = f"{mem / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration):
        memory = "?"
    return f"{cpu}, {os.cpu_count()} cores, {memory} RAM, Python {platform.python_version()}"


def commit() -> str:
    """The commit measured (``+changes`` when the working tree differs from it, figures
    written by an earlier benchmark of the same run aside)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short=10", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!BENCHMARKS.md")
    return head + ("+changes" if changed else "")


def measured_line(command: str) -> str:
    return (
        f"Measured {dt.date.today().isoformat()} at commit `{commit()}` on {machine()}, "
        f"no GPU; `{command}`."
    )


def refuse_quick_write(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--quick`` proves that a benchmark still runs; its figures are too small to publish."""
    if args.quick and args.write:
        parser.error("--quick figures are not written to BENCHMARKS.md: drop --quick or --write")


def write_section(name: str, title: str, text: str) -> None:
    """Replace the ``<!-- name:start -->`` … ``<!-- name:end -->`` block of BENCHMARKS.md
    (appended under ``## title`` the first time); nothing else in the file changes."""
    path = REPO / "BENCHMARKS.md"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    content = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{text}\n{end}"
    if start in content:
        content = re.sub(
            re.escape(start) + ".*?" + re.escape(end), lambda _: block, content, flags=re.S
        )
    else:
        content = content.rstrip() + f"\n\n## {title}\n\n" + block + "\n"
    path.write_text(content)


def rss_bytes() -> int:
    """Resident set size of this process now."""
    try:
        import psutil
    except ImportError:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return int(psutil.Process().memory_info().rss)


class RssPeak:
    """The highest resident set size of this process while the ``with`` block runs,
    sampled every 10 ms by a thread (``peak_rss_bytes`` only knows the whole life's)."""

    def __init__(self) -> None:
        import threading

        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def peak_rss_bytes() -> int:
    """Highest resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation), as latency reports usually give it."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]
