"""Programs that tools run, contained by the operating system (bubblewrap).

The text policy (``policy.check_command``) is a first filter and a courtesy to the agent;
this is the boundary. A sandboxed program:

- sees the system read-only (``/usr``, the links or folders ``/bin``, ``/lib``… point to,
  a few files of ``/etc``: the loader's cache, certificates, time zones, and a passwd that
  names only root and itself), its workspace folder read-write at the same path as on the
  host (paths the text policy checked mean the same inside), an empty ``/tmp`` of its own
  (size-capped), and for the python tool the interpreter's folders, read-only. Nothing else:
  no home, no data dir, no ``/run`` (no sockets of other services), no ``/sys``;
- has its own PID, IPC, UTS and network namespaces: no other process to see or signal, and
  no network at all unless the tool grants it, and then only through the guarded proxy
  (``egress.GuardedProxy``), which applies ``http_fetch``'s rules;
- runs as an unprivileged user with no capabilities and no new privileges: the server's own
  user inside a user namespace (nested ones disabled), or, when the server runs as root,
  ``agents.sandbox.uid`` (set with ``setpriv`` once the namespaces are made);
- has resource limits (CPU time, address space, file size, processes) and a wall-clock
  limit, dies with its parent, and leaves nothing running: its PID namespace ends with it.

When the sandbox cannot be set up, tools that need it refuse to run (``SandboxUnavailable``)
and ``concilium doctor`` says why. There is no fallback to running unconfined.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from concilium.agents.egress import GuardedProxy
from concilium.agents.policy import PolicyDenied
from concilium.agents.tools import ToolError
from concilium.config import NetworkToolSettings, SandboxSettings, ShellSettings

__all__ = ["Sandbox", "SandboxRun", "SandboxUnavailable"]

#: Entries of /etc a program may need; anything else there stays out of sight.
_ETC = (
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "gai.conf",
    "host.conf",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "magic",
    "magic.mime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "protocols",
    "services",
    "ssl",
    "timezone",
)
_SETUP_CAPABILITIES = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_DAC_OVERRIDE")
_TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
#: Inside the sandbox, where the guarded proxy's socket is and where programs find it.
_EGRESS_DIR = "/run/egress"
_PROXY_PORT = 3128
#: The sandbox's own temporary folders (a private tmpfs, not the host's).
_TMP, _TMP_VAR = "/tmp", "/var/tmp"  # noqa: S108


class SandboxUnavailable(PolicyDenied):
    """The sandbox cannot be set up here; programs are not run rather than run unconfined."""


@dataclass(slots=True)
class SandboxRun:
    """What a contained program did."""

    exit_code: int
    #: Standard output and error, interleaved, cut at the tool's limit.
    output: str
    #: Lines the program's runtime guard wrote on the report pipe (python tool).
    reports: list[str] = field(default_factory=list)
    #: Connections the guarded proxy refused, with the reason.
    egress_refused: list[str] = field(default_factory=list)


class Sandbox:
    """Runs programs under bubblewrap with the shell tool's limits."""

    def __init__(
        self,
        settings: SandboxSettings,
        limits: ShellSettings,
        network: NetworkToolSettings,
    ) -> None:
        self.settings = settings
        self.limits = limits
        self.network = network
        self._problem: str | None = None
        self._probed = False

    @property
    def as_root(self) -> bool:
        """The server runs as root: programs run as ``settings.uid`` instead."""
        return os.geteuid() == 0

    # -- availability -----------------------------------------------------------------------

    async def problem(self, *, fresh: bool = False) -> str | None:
        """Why programs cannot be contained here (None: they can). Probed once."""
        if fresh or not self._probed:
            self._problem = await self._probe()
            self._probed = True
        return self._problem

    async def check(self) -> None:
        """Raise ``SandboxUnavailable`` unless programs can be contained here."""
        problem = await self.problem()
        if problem is not None:
            raise SandboxUnavailable(f"programs cannot be contained here: {problem}")

    async def _probe(self) -> str | None:
        if not self.settings.enabled:
            return "the sandbox is switched off (agents.sandbox.enabled = false)"
        if sys.platform != "linux":
            return "the sandbox needs Linux namespaces"
        missing = [p for p in (self.settings.bwrap, "setpriv", "prlimit") if not _which(p)]
        if missing:
            return (
                f"{', '.join(missing)} not found: install bubblewrap and util-linux "
                "(Debian: apt-get install bubblewrap)"
            )
        with tempfile.TemporaryDirectory(prefix="concilium-probe-") as folder:
            try:
                run = await self.run(
                    ["/bin/sh", "-c", "echo ok > probe; cat probe"], Path(folder), python=True
                )
            except (OSError, ToolError) as exc:
                return f"bubblewrap cannot start: {exc}"
        if run.exit_code == 0 and run.output.strip() == "ok":
            return None
        detail = (run.output.strip().splitlines() or [f"exit code {run.exit_code}"])[-1]
        hint = ""
        if "uid map" in run.output or "namespace" in run.output.lower():
            hint = (
                " (user namespaces look disabled for this user: sysctl "
                "kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0, or an "
                "AppArmor profile allowing bwrap)"
            )
        return f"bubblewrap fails here: {detail}{hint}"

    # -- running ----------------------------------------------------------------------------

    async def run(
        self,
        argv: Sequence[str],
        root: Path,
        *,
        stdin: bytes | None = None,
        environment: dict[str, str] | None = None,
        network: bool = False,
        python: bool = False,
        report: bool = False,
        what: str = "command",
    ) -> SandboxRun:
        """Run ``argv`` in the folder ``root``.

        ``network``: reach the network through the guarded proxy (``http_proxy`` points to
        it); ``python``: the server's Python interpreter is visible; ``report``: the number
        of a pipe's write end is added to ``argv``, and its lines come back as
        ``reports``. A run longer than the time limit is killed (``ToolError``)."""
        uid, gid = (self.settings.uid, self.settings.gid) if self.as_root else _ids()
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "TMPDIR": _TMP,
            **(environment or {}),
        }
        with contextlib.ExitStack() as stack:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sandbox-")))
            root = await asyncio.to_thread(
                _prepare, root, scratch, uid, gid, hand_over=self.as_root, network=network
            )
            env["HOME"] = str(root)
            fds: list[int] = []
            pipe: tuple[int, int] | None = None
            if report:
                pipe = os.pipe()
                stack.callback(_close, pipe[0])
                stack.callback(_close, pipe[1])
                fds.append(pipe[1])
                argv = [*argv, str(pipe[1])]
            proxy: GuardedProxy | None = None
            if network:
                proxy = GuardedProxy(scratch / "egress" / "proxy.sock", self.network)
                for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
                    env[name] = f"http://127.0.0.1:{_PROXY_PORT}"
                argv = [*_relay_argv(), *argv]
            command = self._command(argv, root, env, scratch, uid, gid, python or network)
            if proxy is not None:
                await proxy.start()
            try:
                exit_code, output = await self._execute(command, stdin, fds, what)
            finally:
                if proxy is not None:
                    await proxy.close()
            reports: list[str] = []
            if pipe is not None:
                _close(pipe[1])  # the program's copies are closed: it has ended
                reports = await asyncio.to_thread(_read_lines, pipe[0])
        return SandboxRun(exit_code, output, reports, proxy.refused if proxy else [])

    def _command(
        self,
        argv: Sequence[str],
        root: Path,
        env: dict[str, str],
        scratch: Path,
        uid: int,
        gid: int,
        python: bool,
    ) -> list[str]:
        args = [
            _which(self.settings.bwrap) or self.settings.bwrap,
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            "sandbox",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--cap-drop",
            "ALL",
        ]
        if self.as_root:
            # Root makes the namespaces; setpriv then becomes the sandbox's user and drops
            # every capability. Until then (bwrap entering the workspace, which belongs to
            # the sandbox's user, and setpriv changing users) these few are needed.
            for capability in _SETUP_CAPABILITIES:
                args += ["--cap-add", capability]
        else:
            args += ["--unshare-user", "--disable-userns", "--uid", str(uid), "--gid", str(gid)]
        args += ["--ro-bind", "/usr", "/usr"]
        for name in _TOP_LEVEL:
            path = Path("/") / name
            if path.is_symlink():
                args += ["--symlink", os.readlink(path), str(path)]
            elif path.is_dir():
                args += ["--ro-bind", str(path), str(path)]
        args += ["--perms", "0755", "--dir", "/etc"]
        for name in _ETC:
            if (Path("/etc") / name).exists():
                args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        args += ["--ro-bind", str(scratch / "passwd"), "/etc/passwd"]
        args += ["--ro-bind", str(scratch / "group"), "/etc/group"]
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--size", str(self.settings.tmp_mb * 1024 * 1024), "--tmpfs", _TMP]
        args += ["--dir", "/var", "--symlink", _TMP, _TMP_VAR]
        made = {Path("/"), Path("/usr"), Path("/etc"), Path(_TMP), Path("/var")}
        if python:
            for folder in _python_folders():
                args += [*_folders_above(folder, made), "--ro-bind", str(folder), str(folder)]
        args += [*_folders_above(root, made), "--bind", str(root), str(root)]
        args += ["--chdir", str(root)]
        if (scratch / "egress").is_dir():
            args += [*_folders_above(Path(_EGRESS_DIR), made)]
            args += ["--bind", str(scratch / "egress"), _EGRESS_DIR]
        for name, value in env.items():
            args += ["--setenv", name, value]
        args.append("--")
        if self.as_root:
            args += [
                "setpriv",
                f"--reuid={uid}",
                f"--regid={gid}",
                "--clear-groups",
                "--inh-caps=-all",
                "--ambient-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
                # As that user, a second bwrap makes a user namespace, to disable nested
                # ones (only an unprivileged bwrap can); the view stays the one made above.
                *(_which(self.settings.bwrap) or self.settings.bwrap, "--unshare-user"),
                *("--disable-userns", "--uid", str(uid), "--gid", str(gid), "--cap-drop"),
                *("ALL", "--die-with-parent", "--dev-bind", "/", "/", "--chdir", str(root), "--"),
            ]
        else:
            args += ["setpriv", "--no-new-privs", "--bounding-set=-all", "--"]
        processes = self.limits.processes
        args += ["prlimit", f"--nproc={processes}:{processes}", "--", *argv]
        return args

    async def _execute(
        self, command: list[str], stdin: bytes | None, fds: list[int], what: str
    ) -> tuple[int, str]:
        limits = self.limits
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd="/",
            stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_limits(limits),
            start_new_session=True,
            pass_fds=fds,
        )
        try:
            async with asyncio.timeout(limits.timeout_seconds):
                output, _ = await process.communicate(stdin)
        except TimeoutError:
            _kill_group(process.pid)
            await process.wait()
            raise ToolError(f"the {what} ran longer than {limits.timeout_seconds:g}s") from None
        except asyncio.CancelledError:
            _kill_group(process.pid)
            raise
        text = output.decode("utf-8", errors="replace")
        if len(text) > limits.output_chars:
            text = text[: limits.output_chars] + "\n… (output cut)"
        return process.returncode or 0, text


# -- helpers --------------------------------------------------------------------------------


def _which(program: str) -> str | None:
    return shutil.which(program, path="/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")


def _ids() -> tuple[int, int]:
    return os.getuid(), os.getgid()


def _folders_above(path: Path, made: set[Path]) -> list[str]:
    """Options that make the folders above ``path`` in the sandbox, open to its user (bwrap
    would make them private to root)."""
    args: list[str] = []
    for folder in reversed(path.parents):
        if folder not in made:
            made.add(folder)
            args += ["--perms", "0755", "--dir", str(folder)]
    return args


def _python_folders() -> list[Path]:
    """The folders the server's interpreter needs: its prefix (a venv) and the base one."""
    folders = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    folders.add(Path(sys.executable).resolve().parent.parent)
    # Inside /usr they are already there; nested ones come with their parent.
    kept = [f for f in folders if not f.is_relative_to("/usr") and f != Path("/")]
    return sorted(f for f in kept if not any(f != o and f.is_relative_to(o) for o in kept))


def _prepare(
    root: Path, scratch: Path, uid: int, gid: int, *, hand_over: bool, network: bool
) -> Path:
    """The workspace (resolved, created, the sandbox user's when the server is root) and
    the run's scratch folder: the passwd and group files shown inside, the egress folder."""
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    if hand_over:
        _hand_over(root, uid, gid)
    scratch.chmod(0o755)
    (scratch / "passwd").write_text(
        f"root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{uid}:{gid}:sandbox:{root}:/bin/sh\n"
    )
    (scratch / "group").write_text(f"root:x:0:\nsandbox:x:{gid}:\n")
    if network:
        (scratch / "egress").mkdir()
        if hand_over:
            os.chown(scratch / "egress", uid, gid)
    return root


def _hand_over(root: Path, uid: int, gid: int) -> None:
    """Give the workspace to the sandbox's user (the server runs as root).

    Walked by file descriptor, never following a link (``os.fwalk``): a program of another
    run in the same workspace cannot swap a folder for a link to, say, /etc halfway. A file
    with several hard links is left alone: one of its names may be outside."""
    os.chown(root, uid, gid, follow_symlinks=False)
    for _, dirs, files, fd in os.fwalk(root, follow_symlinks=False):
        for name in [*dirs, *files]:
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if (info.st_uid, info.st_gid) == (uid, gid):
                    continue
                if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                    continue
                os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue


def _limits(limits: ShellSettings) -> Callable[[], None]:
    """Resource limits for the sandbox, set between fork and exec (its children inherit)."""

    def restrict() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
        memory = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        size = limits.file_size_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return restrict


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _read_lines(fd: int, limit: int = 64_000) -> list[str]:
    chunks: list[bytes] = []
    size = 0
    os.set_blocking(fd, False)
    with contextlib.suppress(BlockingIOError):
        while size < limit and (chunk := os.read(fd, 4096)):
            chunks.append(chunk)
            size += len(chunk)
    return [line for line in b"".join(chunks).decode(errors="replace").splitlines() if line]


#: Inside the sandbox, before the program: listens where ``http_proxy`` points and carries
#: each connection to the guarded proxy's socket (bound in from the host).
_RELAY = """
import socket, subprocess, sys, threading
def pump(source, target):
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    for s in (source, target):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
def serve(listener):
    while True:
        client, _ = listener.accept()
        upstream = socket.socket(socket.AF_UNIX)
        try:
            upstream.connect(sys.argv[1])
        except OSError:
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(sys.argv[2])))
listener.listen(64)
threading.Thread(target=serve, args=(listener,), daemon=True).start()
sys.exit(subprocess.call(sys.argv[3:], close_fds=False))  # the report pipe stays
"""


def _relay_argv() -> list[str]:
    python = str(Path(sys.executable).resolve())
    return [python, "-I", "-S", "-c", _RELAY, f"{_EGRESS_DIR}/proxy.sock", str(_PROXY_PORT)]
