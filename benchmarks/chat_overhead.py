"""What Concilium adds on top of the model, measured against named alternatives in one run.

Both go through the server's real defaults (a fresh ``concilium serve``, an API key made
with ``POST /api/keys`` after the first administrator's setup, sent with every request).

1. Streaming overhead: the same prompts through Concilium's ``/v1/chat/completions``
   (streamed, over HTTP) and through llama-cpp-python called directly on the same GGUF,
   interleaved prompt by prompt. Reported: time to first token (TTFT) and tokens/s.
   Targets: added TTFT <= 3 ms (median) for every bundled model, throughput ratio >= 0.97.
2. Proxy throughput under load: 50 concurrent streamed requests (wrk) through Concilium
   to a canned OpenAI-protocol upstream, with one and with several server processes
   (``--workers``, rate limits in Redis), versus the same load on the upstream directly.
   Target: >= 1,500 requests/s; p50/p99 added latency one request at a time.

Usage: ``python benchmarks/chat_overhead.py [--models a,b] [--rounds N] [--workers 1,2]
[--write]``; ``--write`` replaces the figures in BENCHMARKS.md; ``--quick`` (smollm2-135m,
3 prompts, 2 s of load) checks that it runs."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from concilium.config import load_settings  # noqa: E402
from concilium.llm import catalog  # noqa: E402
from knowledge_common import measured_line, write_section  # noqa: E402

PROMPTS = [
    "Explain in two sentences what a hash table is.",
    "Write a haiku about the autumn wind.",
    "List three uses of a paperclip.",
    "What is the difference between TCP and UDP?",
    "Give a short definition of photosynthesis.",
    "Name four planets of the solar system and one fact about each.",
    "How do I reverse a list in Python?",
    "Describe the water cycle briefly.",
    "What is a prime number? Give examples.",
    "Suggest a name for a bakery and explain it.",
    "Summarise the plot of Little Red Riding Hood.",
    "What are the primary colours?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@dataclass(frozen=True)
class Server:
    """A running ``concilium serve`` and the API key its benchmark client presents."""

    url: str
    key: str


def _setup_token(log: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> str:
    """The one-time setup token the first start logs (``setup_required``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if '"setup_required"' in line:
                return str(json.loads(line)["setup_token"])
        if proc.poll() is not None:
            raise RuntimeError(f"the server stopped: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    raise RuntimeError("the server logged no setup token")


def api_key(url: str, setup_token: str) -> str:
    """An API key made the README's way: first administrator, login, ``POST /api/keys``."""
    account = {"username": "alice", "password": "a long passphrase"}

    def post(client: httpx.Client, path: str, body: dict[str, object]) -> dict[str, object]:
        response = client.post(path, json=body)
        if response.is_error:
            raise RuntimeError(f"{path}: {response.status_code} {response.text}")
        return dict(response.json())

    with httpx.Client(base_url=url, timeout=30) as client:
        post(client, "/api/auth/setup", {"setup_token": setup_token, **account})
        token = post(client, "/api/auth/login", account)["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        made = post(client, "/api/keys", {"name": "benchmark", "scopes": ["chat"]})
        return str(made["key"])


@contextmanager
def concilium_server(env_extra: dict[str, str], workers: int = 1) -> Iterator[Server]:
    """``concilium serve`` on a fresh data directory, with its defaults but ``env_extra``
    (and the log level at WARNING: the setup token is a warning)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONCILIUM_")}
        env.update(
            {
                "CONCILIUM_DATA_DIR": data,
                "CONCILIUM_CACHE__ENABLED": "false",
                "CONCILIUM_LOGGING__LEVEL": "WARNING",
                **env_extra,
            }
        )
        log = Path(data) / "server.log"
        command = [sys.executable, "-m", "concilium", "serve", "--port", str(port)]
        if workers > 1:
            command += ["--workers", str(workers)]
        with log.open("wb") as sink:
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=sink)
        try:
            url = f"http://127.0.0.1:{port}"
            token = _setup_token(log, proc)
            wait_http(f"{url}/health/live")
            yield Server(url, api_key(url, token))
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@dataclass
class Run:
    ttft: float
    tokens: int
    duration: float  # first token to last token

    @property
    def tokens_per_second(self) -> float:
        return (self.tokens - 1) / self.duration if self.duration > 0 and self.tokens > 1 else 0.0


def direct_run(llm: object, prompt: str, max_tokens: int) -> Run:
    messages = [{"role": "user", "content": prompt}]
    start = time.perf_counter()
    first = last = 0.0
    tokens = 0
    for chunk in llm.create_chat_completion(  # type: ignore[attr-defined]
        messages=messages, stream=True, temperature=0, max_tokens=max_tokens
    ):
        if chunk["choices"][0]["delta"].get("content"):
            now = time.perf_counter()
            first = first or now
            last = now
            tokens += 1
    return Run(first - start, tokens, last - first)


_CONTENT_DELTA = b'"delta":{"content":'


def concilium_run(server: Server, model: str, prompt: str, max_tokens: int) -> Run:
    """One streamed request over a raw socket.

    The client does as little as the direct loop does: it counts content deltas in the
    bytes as they arrive instead of parsing JSON. On two cores an HTTP client library's
    per-chunk parsing steals measurable time from llama.cpp's threads, which would be
    charged to the server.
    """
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps(
        {
            "model": model,
            "stream": True,
            "temperature": 0,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": prompt}],
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {server.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    first = last = 0.0
    tokens = 0
    tail = b""
    status = b""
    with socket.create_connection((host, int(port))) as sock:
        start = time.perf_counter()
        sock.sendall(head + body)
        while data := sock.recv(65536):
            status = status or data[:12]
            window = tail + data
            found = window.count(_CONTENT_DELTA)
            if found:
                now = time.perf_counter()
                first = first or now
                last = now
                tokens += found
            tail = window[-(len(_CONTENT_DELTA) - 1) :]
    if status != b"HTTP/1.1 200":
        raise RuntimeError(f"request failed: {status!r}")
    return Run(first - start, tokens, last - first)


def streaming_overhead(model: str, rounds: int, max_tokens: int) -> dict[str, object]:
    from llama_cpp import Llama

    settings = load_settings()
    path = catalog.locate_model(settings.resolved_models_dir, model)
    threads = os.cpu_count() or 1
    llm = Llama(model_path=str(path), n_ctx=4096, n_threads=threads, n_batch=512, verbose=False)
    env = {"CONCILIUM_MODELS_DIR": str(settings.resolved_models_dir)}
    direct: list[Run] = []
    served: list[Run] = []
    with concilium_server(env) as server:
        concilium_run(server, model, "Hello", 4)  # start the engine, load the model
        direct_run(llm, "Hello", 4)
        for i in range(rounds):
            prompt = PROMPTS[i % len(PROMPTS)]
            pair = [
                lambda p=prompt: direct.append(direct_run(llm, p, max_tokens)),
                lambda p=prompt: served.append(concilium_run(server, model, p, max_tokens)),
            ]
            for run in pair if i % 2 == 0 else reversed(pair):
                run()
    llm.close()
    added = [s.ttft - d.ttft for s, d in zip(served, direct, strict=True)]
    direct_tps = statistics.median(r.tokens_per_second for r in direct)
    served_tps = statistics.median(r.tokens_per_second for r in served)
    return {
        "model": model,
        "rounds": rounds,
        "max_tokens": max_tokens,
        "tokens_per_answer": statistics.median(r.tokens for r in served),
        "direct_ttft_ms": statistics.median(r.ttft for r in direct) * 1000,
        "concilium_ttft_ms": statistics.median(r.ttft for r in served) * 1000,
        "added_ttft_ms": statistics.median(added) * 1000,
        "direct_tps": direct_tps,
        "concilium_tps": served_tps,
        "throughput_ratio": served_tps / direct_tps if direct_tps else 0.0,
    }


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
wrk.body = '{"model": "fake-model", "stream": true, "temperature": 0.7, "max_tokens": 64, ' ..
           '"messages": [{"role": "user", "content": "Say something."}]}'
"""


def wrk(url: str, seconds: int, connections: int, key: str = "") -> dict[str, float]:
    """wrk's throughput and latency percentiles; ``key``: the API key every request sends."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(2, connections)}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            script.name,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "BENCH_KEY": key},
    ).stdout
    os.unlink(script.name)

    def ms(value: str) -> float:
        number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "90", "99"):
        result[f"p{pct}_ms"] = ms(re.search(rf"\s{pct}%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["errors"] = float(errors.group(1)) if errors else 0.0
    if result["errors"]:
        raise RuntimeError(f"{result['errors']:.0f} requests failed under load: {out}")
    return result


#: Requests per minute per address and per key during the load test. The defaults (100)
#: would refuse all but the first 100 requests of a run; raised, every request still goes
#: through the limiter and is counted.
LOAD_RATE_LIMIT = 10_000_000


def proxy_overhead(
    seconds: int, connections: int, chunks: int, workers: list[int], redis_url: str = ""
) -> dict[str, object]:
    """Throughput at ``connections`` concurrent streams, and latency one request at a time,
    on the upstream alone and through Concilium with each number of ``workers``."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed for the load test (apt-get install wrk)")
    upstream_port = free_port()
    upstream = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "benchmarks" / "fake_upstream.py"),
            str(upstream_port),
            str(chunks),
        ]
    )
    direct_url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
    result: dict[str, object] = {"connections": connections, "seconds": seconds, "chunks": chunks}
    try:
        wait_http(f"http://127.0.0.1:{upstream_port}/v1/models")
        backend = {
            "fake": {
                "type": "openai",
                "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                "models": ["fake-model"],
            }
        }
        env = {
            "CONCILIUM_BACKENDS": json.dumps(backend),
            "CONCILIUM_CHAT__DEFAULT_MODEL": "fake-model",
            "CONCILIUM_LIMITS__IP_PER_MINUTE": str(LOAD_RATE_LIMIT),
            "CONCILIUM_LIMITS__KEY_PER_MINUTE": str(LOAD_RATE_LIMIT),
        }
        result["load_direct"] = wrk(direct_url, seconds, connections)
        result["serial_direct"] = wrk(direct_url, seconds, 1)
        for count in workers:
            extra = {}
            if count > 1:  # the processes count the limits together, in Redis
                extra["CONCILIUM_LIMITS__STORAGE_URL"] = redis_url
            with concilium_server({**env, **extra}, count) as server:
                served_url = server.url + "/v1/chat/completions"
                wrk(served_url, 2, connections, server.key)  # warm-up
                result[f"load_concilium_{count}"] = wrk(
                    served_url, seconds, connections, server.key
                )
                result[f"serial_concilium_{count}"] = wrk(served_url, seconds, 1, server.key)
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)
    result["workers"] = workers
    return result


def markdown(streaming: list[dict[str, object]], load: dict[str, object] | None) -> str:
    lines = [
        measured_line("python benchmarks/chat_overhead.py --write"),
        "",
        "Both tests go through the server's real defaults: `concilium serve` on a fresh data "
        "directory, the first administrator made with the setup token it prints, an API key "
        "made with `POST /api/keys` (the README's way) and sent with every request; rate "
        "limits, the audit log, usage accounting, metrics, the JSON access log, mode auto "
        "(the intent classifier) and long-term memory all on. Only the response cache is "
        "off, so that every request reaches the model.",
        "",
        "### Streaming overhead versus llama-cpp-python called directly",
        "",
        "Same GGUF, same prompts, interleaved, alternating which goes first; temperature 0, "
        "same n_ctx/threads/batch. TTFT is measured by the client (Concilium: a raw-socket "
        "HTTP client, from sending the request to the first content delta; direct: from the "
        "call to the first chunk). tok/s is over the answer after its first token. Targets: "
        "added TTFT ≤ 3 ms (median), throughput ratio ≥ 0.97.",
        "",
        "| model | prompts | tokens/answer | TTFT direct | TTFT Concilium "
        "| added TTFT (median of pairs) | tok/s direct | tok/s Concilium | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in streaming:
        lines.append(
            f"| {r['model']} | {r['rounds']} | {r['tokens_per_answer']:.0f} "
            f"| {r['direct_ttft_ms']:.1f} ms | {r['concilium_ttft_ms']:.1f} ms "
            f"| {r['added_ttft_ms']:+.1f} ms | {r['direct_tps']:.1f} | {r['concilium_tps']:.1f} "
            f"| {r['throughput_ratio']:.3f} |"
        )
    if load is not None:
        workers = load["workers"]
        assert isinstance(workers, list)
        connections = load["connections"]
        rows: list[tuple[str, object, object]] = [
            ("upstream directly", load["load_direct"], connections),
            *((_served(n), load[f"load_concilium_{n}"], connections) for n in workers),
            ("upstream directly", load["serial_direct"], 1),
            *((_served(n), load[f"serial_concilium_{n}"], 1) for n in workers),
        ]
        lines += [
            "",
            "### Proxy throughput and added latency",
            "",
            f"wrk for {load['seconds']} s per row, streamed requests to a canned "
            f"OpenAI-protocol upstream ({load['chunks']} chunks per answer; "
            "`benchmarks/fake_upstream.py`), each with the API key. Rate limits stay on "
            f"but are raised to {LOAD_RATE_LIMIT:,} a minute per address and per key (the "
            "default 100 would refuse all but the first hundred requests); every request is "
            "still counted. Several processes (`serve --workers N`) count them in Redis. wrk, "
            "the upstream and the server share the machine's two cores. Target: ≥ 1,500 "
            "req/s with 50 streams.",
            "",
            "| path | concurrent streams | req/s | p50 | p90 | p99 | non-2xx |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r, conns in rows:
            assert isinstance(r, dict)
            lines.append(
                f"| {name} | {conns} | {r['rps']:.0f} | {r['p50_ms']:.2f} ms "
                f"| {r['p90_ms']:.2f} ms | {r['p99_ms']:.2f} ms | {r['errors']:.0f} |"
            )
        sd = load["serial_direct"]
        assert isinstance(sd, dict)
        added = []
        for n in workers:
            sc = load[f"serial_concilium_{n}"]
            assert isinstance(sc, dict)
            added.append(
                f"{_served(n)}: p50 {sc['p50_ms'] - sd['p50_ms']:+.2f} ms, "
                f"p99 {sc['p99_ms'] - sd['p99_ms']:+.2f} ms"
            )
        lines += [
            "",
            "Added latency per request (one stream at a time, no queueing): "
            + "; ".join(added)
            + ". With 50 streams the server is saturated, so latency there is mostly "
            "queueing (50 / throughput), not overhead.",
        ]
    return "\n".join(lines)


def _served(workers: int) -> str:
    return f"through Concilium, {workers} process{'es' if workers > 1 else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="qwen2.5-coder-1.5b,qwen2.5-coder-0.5b,smollm2-135m")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--load-seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument(
        "--workers", default="1,2", help="server processes under load, one run per value"
    )
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/0",
        help="where several workers count their rate limits",
    )
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="smollm2-135m, 3 prompts, 2 s of load (a smoke test)"
    )
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    if args.quick:
        if args.write:
            parser.error("--quick measures too little to be written to BENCHMARKS.md")
        args.models, args.rounds, args.max_tokens, args.load_seconds = "smollm2-135m", 3, 16, 2

    streaming = []
    for model in filter(None, args.models.split(",")):
        print(f"streaming overhead: {model}…", file=sys.stderr)
        streaming.append(streaming_overhead(model, args.rounds, args.max_tokens))
        print(json.dumps(streaming[-1]), file=sys.stderr)
    load = None
    if not args.skip_load:
        print("proxy overhead under load…", file=sys.stderr)
        load = proxy_overhead(
            args.load_seconds,
            args.connections,
            args.chunks,
            [int(n) for n in args.workers.split(",")],
            args.redis_url,
        )
        print(json.dumps(load), file=sys.stderr)
    text = markdown(streaming, load)
    print(text)
    if args.write:
        write_section("chat_overhead", "Chat overhead", text)


if __name__ == "__main__":
    main()
