"""Helpers shared by the knowledge benchmarks: machine description, BENCHMARKS.md
sections, memory figures and percentiles."""

from __future__ import annotations

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


def measured_line(command: str) -> str:
    return f"Measured {dt.date.today().isoformat()} on {machine()}, no GPU; `{command}`."


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
