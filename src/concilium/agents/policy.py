"""What tools may do: one module, default deny.

- ``ToolPolicy`` decides whether a caller may use a tool at all and whether a person must
  approve the call first (read-only tools are on; anything that writes, reaches the
  network or runs code is off until an administrator enables it).
- ``check_command`` reads a shell command the way the shell will (``shlex``, operators,
  pipelines, redirections, quoting) and refuses dangerous programs and patterns.
- ``confine`` resolves a path, symlinks included, and refuses anything outside the
  workspace or that is not a regular file or directory.
- ``check_url`` resolves a URL's host and refuses loopback, private, link-local,
  metadata and other non-public addresses (SSRF) unless allow-listed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import shlex
import socket
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from concilium.agents.tools import Risk, Tool, ToolContext
from concilium.auth.principal import Scope
from concilium.config import AgentSettings
from concilium.store.models import Role

__all__ = [
    "Decision",
    "PolicyDenied",
    "ToolPolicy",
    "check_command",
    "check_host",
    "check_remote_command",
    "check_url",
    "confine",
]


class PolicyDenied(Exception):
    """The policy refused an action; the message says why (shown to the agent)."""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    approval: bool = False
    reason: str = ""


class ToolPolicy:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings

    def decide(self, tool: Tool, context: ToolContext) -> Decision:
        """May this caller use the tool, and must a person approve each call?

        Checked in order: enabled (admins' settings; read-only tools on by default),
        workspace list, the caller's workspace role, the API key's scopes (anything beyond
        reading needs the ``tools`` scope), then approval."""
        configured = self.settings.tools.get(tool.name)
        enabled = configured.enabled if configured and configured.enabled is not None else None
        if enabled is None:
            enabled = tool.risk == Risk.READ
        if not enabled:
            return Decision(False, reason=f"the tool {tool.name!r} is not enabled")
        principal = context.principal
        if (
            configured
            and configured.workspaces
            and not principal.is_operator
            and principal.workspace_id not in configured.workspaces
        ):
            return Decision(False, reason=f"{tool.name!r} is not enabled in this workspace")
        if not principal.is_operator:
            needed: str = Role.VIEWER if tool.risk == Risk.READ else Role.MEMBER
            if configured and configured.min_role:
                needed = configured.min_role
            if context.role is None or not Role.at_least(context.role, needed):
                return Decision(False, reason=f"{tool.name!r} needs the {needed} role or above")
        needed_scopes = set(tool.scopes)
        if tool.risk != Risk.READ:
            needed_scopes.add(Scope.TOOLS)
        missing = sorted(needed_scopes - context.scopes)
        if missing:
            return Decision(False, reason=f"{tool.name!r} needs the scope(s) {', '.join(missing)}")
        approval = configured.approval if configured and configured.approval is not None else None
        if approval is None:
            approval = tool.risk == Risk.EXECUTE
        return Decision(True, approval=approval)


# -- paths ----------------------------------------------------------------------------------


def confine(root: Path, path: str, *, must_exist: bool = False) -> Path:
    """``path`` (relative to ``root``, or absolute inside it) resolved with its symlinks;
    refused when it leads outside ``root`` or to a device, pipe or socket."""
    if "\x00" in path:
        raise PolicyDenied("a path cannot contain NUL")
    if path.startswith("~"):
        raise PolicyDenied(f"{path!r} is outside the workspace")
    base = root.resolve()
    given = Path(path)
    candidate = given if given.is_absolute() else base / given
    resolved = candidate.resolve(strict=False)
    if not resolved.is_relative_to(base):
        raise PolicyDenied(f"{path!r} is outside the workspace")
    try:
        mode = resolved.lstat().st_mode
    except FileNotFoundError:
        if must_exist:
            raise PolicyDenied(f"{path!r} does not exist") from None
        return resolved
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise PolicyDenied(f"{path!r} is not a regular file or directory")
    return resolved


# -- shell ----------------------------------------------------------------------------------

# fmt: off
#: Programs never run from the shell tool, whatever their arguments.
DENIED_PROGRAMS = frozenset(
    {
        # privilege and identity
        "sudo", "su", "doas", "pkexec", "passwd", "chpasswd", "useradd", "userdel",
        "usermod", "groupadd", "groupdel", "visudo", "chroot", "nsenter", "unshare",
        "setcap", "capsh",
        # disks and file systems
        "mkfs", "mke2fs", "mkswap", "fdisk", "sfdisk", "cfdisk", "parted", "gdisk",
        "wipefs", "shred", "mount", "umount", "swapon", "swapoff", "losetup", "cryptsetup",
        "debugfs", "tune2fs", "blkdiscard",
        # the machine
        "shutdown", "reboot", "halt", "poweroff", "init", "telinit", "systemctl",
        "service", "killall", "pkill", "insmod", "rmmod", "modprobe", "sysctl",
        "iptables", "ip6tables", "nft", "ufw", "crontab", "at", "batch",
        # raw network and remote shells (the HTTP and SSH tools are the guarded way)
        "nc", "ncat", "netcat", "socat", "telnet", "ssh", "scp", "sftp", "ftp", "rsh",
        "rlogin", "tftp", "nmap", "tcpdump",
        # evaluation of strings and the shell's own escape hatches
        "eval", "exec", "source", ".", "alias", "trap", "enable", "builtin",
        # containers (the Docker tool is the guarded way)
        "docker", "podman", "kubectl", "ctr", "nerdctl",
        # history and persistence
        "history", "chattr", "setfacl",
    }
)
#: Shells and interpreters: fine to run a file of the workspace, refused with inline code
#: (``-c``/``-e``) or with no file (they would read code from a pipe or their input).
INTERPRETERS = frozenset(
    {
        "sh", "bash", "dash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "ash", "yash",
        "posh", "rbash", "python", "python3", "perl", "ruby", "node", "nodejs", "php", "lua",
        "tclsh",
    }
)
#: Programs whose business is running other programs or a shell (GTFOBins' "shell" and
#: "command" functions): editors and pagers with a shell escape, debuggers and tracers,
#: terminal multiplexers, compilers and build tools, package managers, database shells,
#: other interpreters. Refused unless an administrator lists them in ``shell.runners``.
RUNNERS = frozenset(
    {
        # editors and pagers (":!cmd", "!cmd")
        "vi", "vim", "nvim", "view", "vimdiff", "rvim", "rview", "ex", "ed", "red", "emacs",
        "nano", "pico", "joe", "mg", "jed", "less", "more", "most", "pg", "man", "info",
        "pager", "sensible-pager", "sensible-editor", "editor", "select-editor",
        # debuggers, tracers, loaders
        "gdb", "lldb", "strace", "ltrace", "valgrind", "perf", "pdb", "ld.so", "ldd",
        # sessions and wrappers that take a command string
        "script", "screen", "tmux", "byobu", "dtach", "expect", "unbuffer", "rlwrap", "watch",
        "busybox", "toybox", "run-parts", "start-stop-daemon", "setarch", "linux32",
        "linux64", "systemd-run", "runuser", "setpriv", "sg", "newgrp", "cpulimit",
        "multitime", "parallel", "flock", "xdg-open", "run-mailcap", "sensible-browser", "prlimit",
        "faketime", "fakeroot", "proot", "bwrap", "firejail", "chronic", "ts", "sem",
        # compilers and build tools (a compiled program runs whatever it likes)
        "gcc", "g++", "cc", "c++", "clang", "clang++", "tcc", "gfortran", "as", "ld",
        "make", "gmake", "cmake", "ninja", "meson", "scons", "javac", "java", "jshell",
        "rustc", "cargo", "go", "dotnet", "mono", "ghc", "ghci", "runghc", "kotlinc",
        "scalac", "swift", "zig", "nasm", "yasm",
        # package managers (install scripts)
        "apt", "apt-get", "aptitude", "dpkg", "rpm", "yum", "dnf", "zypper", "apk",
        "pacman", "snap", "flatpak", "pip", "pip3", "pipx", "uv", "poetry", "conda",
        "npm", "npx", "yarn", "pnpm", "bun", "deno", "gem", "bundle", "cpan", "cpanm",
        "easy_install", "composer",
        # database and mail clients with shell escapes
        "mysql", "mariadb", "psql", "sqlite3", "redis-cli", "mongo", "mongosh", "mail",
        "mailx", "mutt", "neomutt",
        # other interpreters and calculators with a shell escape
        "irb", "pry", "byebug", "jjs", "jrunscript", "guile", "sbcl", "clisp", "wish",
        "R", "Rscript", "julia", "luajit", "rake", "ginsh", "slsh", "dc", "gnuplot",
        "octave", "gawk-debug", "crash", "ansible", "ansible-playbook", "puppet", "salt",
        "tclsh8.6", "php-cgi", "osascript", "pwsh", "powershell",
    }
)
#: Programs that reach other machines: refused unless the tool has the network (and then
#: the sandbox sends them through the guarded proxy, or nowhere).
NETWORK_PROGRAMS = frozenset(
    {
        "ping", "ping6", "traceroute", "traceroute6", "tracepath", "mtr", "arping",
        "hping3", "masscan", "zmap", "dig", "nslookup", "host", "whois", "drill", "rsync",
        "smbclient", "ldapsearch", "snmpwalk", "ntpdate", "openvpn", "wg", "iperf",
        "iperf3", "nping", "fping", "ab", "siege", "websocat", "grpcurl", "lftp",
    }
)
_INLINE_FLAGS = frozenset({"-c", "-e", "-E", "-r", "--eval", "--command", "-exec"})
DOWNLOADERS = frozenset({"curl", "wget", "fetch", "aria2c", "lwp-request", "http"})
#: Commands that run their arguments as another command.
WRAPPERS = frozenset(
    {"env", "nice", "nohup", "time", "command", "timeout", "stdbuf", "ionice", "xargs",
     "setsid", "chrt", "taskset"}
)
# fmt: on
_SECRETS = re.compile(
    r"(^|/)(\.ssh|\.gnupg|\.aws|\.kube|\.docker|\.netrc|\.pgpass|\.git-credentials|"
    r"id_rsa|id_dsa|id_ecdsa|id_ed25519|shadow|gshadow|sudoers|\.bash_history|"
    r"\.zsh_history|\.env|credentials|authorized_keys|known_hosts)($|/|\b)"
)
_FORK_BOMB = re.compile(r"(\w+|:)\s*\(\s*\)\s*\{[^}]*\1\s*\|\s*\1\s*&")
_OPERATORS = {";", "&&", "||", "|", "&", "\n", "|&", ";;", "(", ")"}
_REDIRECTS = {">", ">>", "<", "<<", "<<<", ">&", "<&", "&>", "&>>", ">|", "<>"}
_SAFE_ABSOLUTE = frozenset({"/dev/null", "/dev/stdin", "/dev/stdout", "/dev/stderr"})
_SYSTEM_FOLDERS = (
    "bin",
    "boot",
    "dev",
    "etc",
    "home",
    "lib",
    "lib64",
    "opt",
    "proc",
    "root",
    "run",
    "sbin",
    "srv",
    "sys",
    "usr",
    "var",
)
_RM_DANGEROUS = frozenset(
    {"/", "/*", "~", "~/", "~/*", ".", "..", "./", "../", "*/.."}
    | {f"/{name}{end}" for name in _SYSTEM_FOLDERS for end in ("", "/", "/*")}
)


#: Shell arithmetic on numbers only: ``$(( (3 + 4) * 2 ))`` (no names, nothing nested).
_ARITHMETIC = re.compile(r"\$\(\(([0-9\s+\-*/%()<>=!&|^~?:,]*)\)\)")


def _expansions(command: str) -> str | None:
    """Why the command expands something we cannot see statically, if it does."""
    quote = ""
    i = 0
    while i < len(command):
        c = command[i]
        if quote == "'":
            quote = "" if c == "'" else quote
        elif c == "\\":
            i += 1
        elif c == "'" and not quote:
            quote = "'"
        elif c == '"':
            quote = "" if quote == '"' else '"'
        elif c == "`":
            return "command substitution (backquotes)"
        elif c == "$" and i + 1 < len(command):
            nxt = command[i + 1]
            arithmetic = _ARITHMETIC.match(command, i)
            if arithmetic is not None:
                i = arithmetic.end()
                continue
            if nxt == "(":
                return "command substitution $(…)"
            if nxt == "{" or nxt.isalpha() or nxt == "_" or nxt.isdigit() or nxt in "@*#?$!":
                return "variable expansion ($…): write the value itself"
        elif c in "<>" and i + 1 < len(command) and command[i + 1] == "(" and not quote:
            return "process substitution"
        i += 1
    if quote:
        return "an unterminated quote"
    return None


def _tokens(command: str) -> list[str]:
    """The command's words and operators, read the way the shell reads them."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        return list(lexer)
    except ValueError as exc:
        raise PolicyDenied(f"the command cannot be parsed: {exc}") from None


def _split(tokens: Sequence[str]) -> list[tuple[list[str], str]]:
    """Simple commands with the operator that follows each."""
    out: list[tuple[list[str], str]] = []
    current: list[str] = []
    for token in tokens:
        if token in _OPERATORS:
            out.append((current, token))
            current = []
        else:
            current.append(token)
    out.append((current, ""))
    return [(words, op) for words, op in out if words or op in ("|", "|&")]


def _outside(root: Path | None, word: str) -> bool:
    if root is None or word in _SAFE_ABSOLUTE:  # a remote machine: no workspace to keep to
        return False
    if word.startswith("~"):
        return True
    try:
        confine(root, word)
    except PolicyDenied:
        return True
    return False


#: Subcommands of denied programs that only read (``systemctl status nginx``).
_READ_ONLY_SUBCOMMANDS = {
    "systemctl": frozenset(
        {
            "status",
            "show",
            "is-active",
            "is-enabled",
            "is-failed",
            "list-units",
            "list-unit-files",
            "list-timers",
            "list-sockets",
            "list-dependencies",
            "cat",
        }
    ),
    "service": frozenset({"--status-all"}),
}


def _read_only_use(program: str, args: list[str]) -> bool:
    words = [a for a in args if not a.startswith("-") or a == "--status-all"]
    subcommands = _READ_ONLY_SUBCOMMANDS.get(program, frozenset())
    if program == "service" and len(words) == 2 and words[1] == "status":
        return True
    return bool(words) and words[0] in subcommands


#: What the ssh tool runs on a host in allow mode (its default), as leading words: commands
#: that only read. Administrators add more per host (``agents.ssh.<host>.commands``).
READ_ONLY_REMOTE_COMMANDS = (
    "uptime",
    "uname",
    "hostname",
    "whoami",
    "id",
    "groups",
    "w",
    "who",
    "last",
    "date",
    "df",
    "du",
    "free",
    "vmstat",
    "iostat",
    "mpstat",
    "nproc",
    "lscpu",
    "lsblk",
    "lsmem",
    "lsof",
    "lsusb",
    "lspci",
    "ps",
    "pgrep",
    "pstree",
    "top -b",
    "ss",
    "netstat",
    "ip addr show",
    "ip -br addr",
    "ip route show",
    "ip link show",
    "ip -br link",
    "ls",
    "stat",
    "file",
    "cat",
    "head",
    "tail",
    "wc",
    "grep",
    "egrep",
    "fgrep",
    "zgrep",
    "zcat",
    "sort",
    "cut",
    "tr",
    "find",
    "md5sum",
    "sha1sum",
    "sha256sum",
    "getent",
    "echo",
    "printf",
    "true",
    "test",
    "basename",
    "dirname",
    "readlink",
    "realpath",
    "systemctl status",
    "systemctl show",
    "systemctl is-active",
    "systemctl is-enabled",
    "systemctl is-failed",
    "systemctl list-units",
    "systemctl list-unit-files",
    "systemctl list-timers",
    "systemctl cat",
    "journalctl",
    "service --status-all",
    "docker ps",
    "docker images",
    "docker logs",
    "docker inspect",
    "docker stats --no-stream",
    "docker version",
    "docker info",
    "nginx -t",
    "apachectl -t",
    "sshd -t",
    "dpkg -l",
    "dpkg -s",
    "rpm -qa",
    "rpm -q",
    "apt list",
    "uptime -p",
)
#: Options that make a read-only command of that list write or change something.
_REMOTE_WRITE_OPTIONS = {
    "date": ("-s", "--set"),
    "hostname": ("-b", "-F", "--boot", "--file"),
    "sort": ("-o", "--output"),
    "journalctl": (
        "--vacuum-size",
        "--vacuum-time",
        "--vacuum-files",
        "--rotate",
        "--flush",
        "--sync",
        "--relinquish-var",
        "--smart-relinquish-var",
        "--setup-keys",
        "--update-catalog",
    ),
    "find": ("-fprint", "-fprint0", "-fprintf", "-fls"),
}


def check_remote_command(command: str, entries: Iterable[str]) -> None:
    """Allow mode of the ssh tool: each simple command starts with the words of one of the
    ``entries``, writes no file, and passes ``check_command``'s other checks."""
    prefixes = [tuple(e.split()) for e in entries if e.split()]
    check_command(command, None, allow={p[0] for p in prefixes})
    for words, _ in _split(_tokens(command)):
        plain: list[str] = []
        i = 0
        while i < len(words):
            word = words[i]
            if word in _REDIRECTS or re.fullmatch(r"\d?[<>]{1,2}&?", word):
                target = words[i + 1] if i + 1 < len(words) else ""
                if ">" in word and not target.isdigit() and target != "/dev/null":
                    raise PolicyDenied(f"writing to {target!r} on the host is not allowed")
                i += 2
                continue
            plain.append(word)
            i += 1
        if not plain:
            continue
        if not any(tuple(plain[: len(p)]) == p for p in prefixes):
            shown = " ".join(plain[:3])
            raise PolicyDenied(
                f"{shown!r} is not among this host's allowed commands (read-only by default; "
                "an administrator adds more in agents.ssh.<host>.commands)"
            )
        name = "hostname" if plain[0] == "hostname" and len(plain) > 1 else plain[0]
        writes = _REMOTE_WRITE_OPTIONS.get(name, ())
        if name == "hostname" and not plain[1].startswith("-"):
            raise PolicyDenied("hostname NAME changes the host's name")
        for arg in plain[1:]:
            if arg.split("=", 1)[0] in writes:
                raise PolicyDenied(f"{plain[0]} {arg} changes the host")


def _is_runner(program: str) -> bool:
    return program in RUNNERS or program.startswith(("ld-linux", "ld64.so", "python2"))


#: Options (or subcommands) that make a common program run a command of the caller's choice.
_COMMAND_OPTIONS: dict[str, frozenset[str]] = {
    name: frozenset(options)
    for name, options in {
        "tar": (
            "--checkpoint-action",
            "--to-command",
            "--use-compress-program",
            "-I",
            "--info-script",
            "--new-volume-script",
            "-F",
            "--rsh-command",
            "--rmt-command",
        ),
        "zip": ("-T", "-TT", "--unzip-command", "--test"),
        "sort": ("--compress-program",),
        "split": ("--filter",),
        "git": (
            "-c",
            "--config-env",
            "--exec-path",
            "--upload-pack",
            "--receive-pack",
            "--exec",
            "--ext-diff",
            "--extcmd",
            "--tool",
        ),
        "find": (
            "-exec",
            "-execdir",
            "-ok",
            "-okdir",
            "-delete",
            "-fprint",
            "-fprint0",
            "-fprintf",
            "-fls",
        ),
        "openssl": ("s_client", "s_server", "s_time", "ocsp", "engine", "-engine"),
        "sdiff": ("--diff-program",),
        "diff": ("--diff-program",),
    }.items()
}
#: Short options of those that take their value attached (``-Icmd``).
_ATTACHED = {"tar": ("-I", "-F")}
_GIT_RUNNING = frozenset(
    {
        "config",
        "difftool",
        "mergetool",
        "filter-branch",
        "submodule",
        "daemon",
        "instaweb",
        "web--browse",
        "send-email",
        "credential",
        "bisect",
        "rebase",
        "archimport",
        "p4",
        "svn",
        "cvsimport",
        "cvsserver",
        "remote-ext",
        "help",
        "fsmonitor--daemon",
        "-p",
        "--paginate",
    }
)
_SED_EXECUTES = re.compile(
    r"(^|[;{}\n!0-9$/,]\s*)[eRrWw](\s|$|;|\})"  # the e, r, R, w and W commands
    r"|s(.).*?\3.*?\3[gpiImM0-9]*[ew]"  # the e and w flags of s///
)
_AWK_EXECUTES = re.compile(r"\bsystem\s*\(|(?<!\|)\|(?!\|)|\bgetline\b")
_AWKS = frozenset({"awk", "gawk", "mawk", "nawk"})


def _scripts(program: str, args: list[str]) -> list[str]:
    """The program text given to awk or sed on their command line."""
    if program not in _AWKS and program != "sed":
        return []
    found = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-e", "--expression")]
    if program == "sed" and found:
        return found
    return [*found, *[a for a in args if not a.startswith("-")][:1]]


def _runs_something(program: str, args: list[str]) -> str | None:
    """Why a common, useful program is asked to run a command of the caller's choice."""
    options = _COMMAND_OPTIONS.get(program, frozenset())
    for arg in args:
        name = arg.split("=", 1)[0]
        attached = any(arg.startswith(o) for o in _ATTACHED.get(program, ()))
        if name in options or attached:
            return f"{program} {name} runs a command of the caller's choice"
    if program in _AWKS and any(_AWK_EXECUTES.search(s) for s in _scripts(program, args)):
        return f"{program} with system(), a pipe or getline runs commands"
    if program == "sed" and any(_SED_EXECUTES.search(s) for s in _scripts(program, args)):
        return "sed's e, r and w commands run commands or reach other files"
    if program == "git":
        sub = next((a for a in args if not a.startswith("-") or a in _GIT_RUNNING), "")
        if sub in _GIT_RUNNING or sub.startswith("!"):
            return f"git {sub} can run commands of the caller's choice"
        if any(a.startswith("core.") for a in args):
            return "git settings can name commands to run"
    return None


def _program(words: list[str]) -> tuple[str, list[str]]:
    """The program a simple command runs (wrappers and assignments skipped) and its
    arguments."""
    i = 0
    while i < len(words):
        word = words[i]
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", word):  # VAR=value prefix
            i += 1
            continue
        name = PurePosixPath(word).name
        if name in WRAPPERS:
            i += 1
            while i < len(words) and (words[i].startswith("-") or words[i][:1].isdigit()):
                if name == "env" and words[i].startswith(("-S", "--split-string")):
                    raise PolicyDenied("env -S runs a command line of the caller's choice")
                i += 1  # the wrapper's own options and durations ("timeout 5")
            continue
        return name, words[i + 1 :]
    return "", []


def check_command(
    command: str,
    root: Path | None,
    *,
    allow: Iterable[str] = (),
    deny: Iterable[str] = (),
    runners: Iterable[str] = (),
    network: bool = False,
) -> None:
    """Raise ``PolicyDenied`` unless ``command`` is safe to run in ``root`` (None: on a
    remote host, where paths are not confined but everything else is checked).

    A first filter, and a courtesy to the agent (a clear reason rather than a wall): the
    operating-system sandbox is the boundary. ``allow`` turns on allow-list mode;
    ``runners`` are programs that run other programs, allowed here; ``network``: the
    command may reach the network (through the guarded proxy)."""
    if not command.strip():
        raise PolicyDenied("empty command")
    if "\x00" in command or len(command) > 10_000:
        raise PolicyDenied("the command is not plain text of a sane length")
    if _FORK_BOMB.search(command):
        raise PolicyDenied("a fork bomb")
    lowered = command.lower()
    if "/dev/tcp/" in lowered or "/dev/udp/" in lowered:
        raise PolicyDenied("a network connection through /dev/tcp (reverse shell)")
    why = _expansions(command)
    if why:
        raise PolicyDenied(f"{why} is not allowed")
    tokens = _tokens(command)
    allowed = frozenset(allow)
    admin_denied = frozenset(deny)
    denied = DENIED_PROGRAMS | admin_denied
    permitted_runners = frozenset(runners) | allowed
    commands = _split(tokens)
    previous_op = ""
    previous_program = ""
    for words, op in commands:
        # Redirections: the target must stay in the workspace.
        clean: list[str] = []
        i = 0
        while i < len(words):
            word = words[i]
            if word in _REDIRECTS or re.fullmatch(r"\d?[<>]{1,2}&?", word):
                target = words[i + 1] if i + 1 < len(words) else ""
                if target and not target.isdigit() and target != "-" and _outside(root, target):
                    raise PolicyDenied(f"redirection to {target!r}, outside the workspace")
                i += 2
                continue
            clean.append(word)
            i += 1
        program, args = _program(clean)
        if not program:
            previous_op = op
            continue
        if allowed and program not in allowed:
            raise PolicyDenied(f"{program!r} is not in the allowed commands")
        explicitly_allowed = program in allowed and program not in admin_denied
        if (program in denied and not explicitly_allowed and not _read_only_use(program, args)) or (
            program.startswith("mkfs.")
        ):
            raise PolicyDenied(f"{program!r} is not allowed")
        if _is_runner(program) and program not in permitted_runners:
            raise PolicyDenied(
                f"{program!r} runs other programs; it is refused unless an administrator "
                "allows it (agents.shell.runners)"
            )
        if program in INTERPRETERS or program.startswith("python"):
            if any(a in _INLINE_FLAGS or a.startswith("-c") for a in args):
                raise PolicyDenied(f"inline code for {program!r}: use the python tool")
            if previous_op in ("|", "|&") and not args:
                source = f" from {previous_program!r}" if previous_program else ""
                raise PolicyDenied(f"piping into {program!r}{source} runs unseen code")
            if not any(not a.startswith("-") for a in args):
                raise PolicyDenied(f"{program!r} without a script file would read unseen code")
        if not network and (program in DOWNLOADERS or program in NETWORK_PROGRAMS):
            if program in DOWNLOADERS:
                raise PolicyDenied(f"{program!r} downloads: use the http_fetch tool")
            raise PolicyDenied(f"{program!r} reaches the network, which this tool has not")
        why = _runs_something(program, args)
        if why:
            raise PolicyDenied(why)
        if program == "find" and any(a in ("-exec", "-execdir", "-ok", "-delete") for a in args):
            raise PolicyDenied("find with -exec/-delete: run the command itself")
        if program == "dd" and any(a.startswith(("of=", "if=/dev")) for a in args):
            raise PolicyDenied("dd writing to a file or reading a device")
        if program == "rm" and (
            "--no-preserve-root" in args or any(a in _RM_DANGEROUS for a in args)
        ):
            raise PolicyDenied("rm of the root, a system folder, the home directory or a parent")
        if program in ("chmod", "chown", "chgrp") and any(
            a in ("/", "-R", "--recursive") and _outside(root, args[-1]) for a in args
        ):
            raise PolicyDenied(f"{program} outside the workspace")
        if program in ("kill",) and any(a in ("1", "-1", "0") for a in args):
            raise PolicyDenied("killing init or every process")
        if program == "git" and args[:1] == ["config"] and "--global" in args:
            raise PolicyDenied("git config --global changes the machine's settings")
        scripts = _scripts(program, args)
        for arg in args:
            if _SECRETS.search(arg):
                raise PolicyDenied(f"{arg!r} looks like a credential file")
            if arg in scripts:
                continue  # an awk or sed program, not a path (its commands were checked)
            value = arg.split("=", 1)[1] if "=" in arg and not arg.startswith("/") else arg
            if not value or value.startswith("-"):
                continue
            # Anything that names a path, symlinks of the workspace included, must stay in.
            suspicious = (
                value.startswith(("/", "~"))
                or "/" in value
                or ".." in PurePosixPath(value).parts
                or (root is not None and (root / value).is_symlink())
            )
            if suspicious and _outside(root, value):
                raise PolicyDenied(f"{arg!r} is outside the workspace")
        previous_op, previous_program = op, program


# -- network --------------------------------------------------------------------------------

_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address in _METADATA
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv4Address) and address in _SHARED)
        or not address.is_global
    )


_SHARED = ipaddress.ip_network("100.64.0.0/10")


async def check_url(url: str, allow: Iterable[str] = ()) -> tuple[str, int, list[str]]:
    """(host, port, addresses to connect to) for a URL the network tools may fetch."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise PolicyDenied(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise PolicyDenied("only http and https URLs")
    if parts.username or parts.password:
        raise PolicyDenied("URLs with credentials are refused")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise PolicyDenied("the URL has no host")
    port = port or (443 if parts.scheme == "https" else 80)
    return host, port, await check_host(host, port, allow)


async def check_host(host: str, port: int, allow: Iterable[str] = ()) -> list[str]:
    """The addresses of ``host`` that a tool may connect to on ``port``: all of them must
    be public, unless the host or their network is allow-listed."""
    host = host.rstrip(".").lower()
    if not host:
        raise PolicyDenied("no host")
    if not 0 < port < 65536:
        raise PolicyDenied(f"port {port} is not a valid port")
    allowed_hosts = {a.lower() for a in allow if "/" not in a}
    networks = [ipaddress.ip_network(a, strict=False) for a in allow if "/" in a]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise PolicyDenied(f"{host} does not resolve: {exc}") from None
    addresses = sorted({str(info[4][0]) for info in infos})
    if host in allowed_hosts:
        return addresses
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if any(address in n for n in networks):
            continue
        if not _public(address):
            raise PolicyDenied(f"{host} resolves to {text}, which is not a public address")
    return addresses
