"""Settings of the agents package: tools, the shell, network, SSH and MCP, the sandbox."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from concilium.section import Section

__all__ = [
    "AgentSettings",
    "McpServerSettings",
    "NetworkToolSettings",
    "SandboxSettings",
    "ShellSettings",
    "SshHostSettings",
    "ToolSettings",
]


class ToolSettings(Section):
    """One tool's switches (unset: read-only tools on, others off; execute tools approved)."""

    enabled: bool | None = Field(None, description="Allow the tool (admins decide).")
    approval: bool | None = Field(None, description="A person approves each call before it runs.")
    min_role: Literal["viewer", "member", "admin"] | None = Field(
        None,
        description="Weakest workspace role that may use it (unset: viewer for read-only "
        "tools, member for the others).",
    )
    workspaces: list[str] = Field(
        default_factory=list, description="Only in these workspaces, by id (empty: all)."
    )


class ShellSettings(Section):
    """The shell and python tools: what the text policy lets through, and their limits."""

    allow: list[str] = Field(
        default_factory=list,
        description="Allow-list mode: only these programs (empty: all but the denied ones).",
    )
    deny: list[str] = Field(
        default_factory=list, description="Programs refused besides the built-in list."
    )
    runners: list[str] = Field(
        default_factory=list,
        description="Programs that run other programs (editors, pagers, compilers, build "
        "tools, debuggers, package managers…), refused by default, that are allowed here "
        "(e.g. make, gcc, git hooks stay inside the sandbox).",
    )
    network: bool = Field(
        False,
        description="Shell commands and Python snippets may reach the network, only through "
        "the guarded proxy with http_fetch's rules (public addresses and agents.network.allow).",
    )
    processes: int = Field(
        256, ge=8, le=100_000, description="Processes and threads a command may have at once."
    )
    timeout_seconds: float = Field(30.0, gt=0, le=3600, description="Wall-clock limit.")
    cpu_seconds: int = Field(20, ge=1, description="CPU time limit of the command.")
    memory_mb: int = Field(1024, ge=16, description="Address-space limit of the command.")
    file_size_mb: int = Field(100, ge=1, description="Largest file the command may write.")
    output_chars: int = Field(20_000, ge=100, description="Output kept for the agent.")


class NetworkToolSettings(Section):
    """Tools that reach other machines."""

    allow: list[str] = Field(
        default_factory=list,
        description="Hosts or CIDR networks reachable even though private (e.g. an intranet wiki).",
    )
    max_bytes: int = Field(2_000_000, ge=1024, description="Largest response read.")
    timeout_seconds: float = Field(15.0, gt=0, le=300, description="Per request.")
    max_redirects: int = Field(5, ge=0, le=20, description="Redirects followed.")


class SshHostSettings(Section):
    """A machine the ssh tool may run commands on."""

    host: str = Field(description="Address or name.")
    port: int = Field(22, ge=1, le=65535, description="SSH port.")
    username: str = Field(description="Login name.")
    key_file: Path = Field(description="Private key file (no passwords are used).")
    known_hosts: Path = Field(description="known_hosts file the host key must match.")
    mode: Literal["allow", "deny"] = Field(
        "allow",
        description="allow: only read-only commands (a built-in list) and those in "
        "`commands`; deny: anything the shell policy does not refuse.",
    )
    commands: list[str] = Field(
        default_factory=list,
        description='More allowed commands, as leading words (e.g. "systemctl restart nginx").',
    )


class McpServerSettings(Section):
    """An MCP server whose tools the agent may use, under the same policy as the others."""

    transport: Literal["stdio", "http"] = Field(
        "stdio", description="stdio: a program started here; http: Streamable HTTP."
    )
    command: str | None = Field(None, description="stdio: the program to start.")
    args: list[str] = Field(default_factory=list, description="stdio: its arguments.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="stdio: its environment (nothing of the server's own is passed on).",
    )
    cwd: Path | None = Field(None, description="stdio: its working directory.")
    url: str | None = Field(None, description="http: the server's MCP endpoint.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="http: headers sent with every request (auth)."
    )
    risk: Literal["read", "write", "network", "execute"] = Field(
        "network",
        description="Risk level of its tools: decides whether they are on by default and "
        "need approval (a server's own hints never lower it).",
    )
    tools: list[str] = Field(
        default_factory=list, description="Only these of its tools (empty: all it lists)."
    )
    timeout_seconds: float = Field(30.0, gt=0, le=3600, description="Per tool call.")

    @model_validator(mode="after")
    def _transport_needs(self) -> McpServerSettings:
        if self.transport == "stdio" and not self.command:
            raise ValueError("an MCP server over stdio needs a command")
        if self.transport == "http" and not self.url:
            raise ValueError("an MCP server over http needs a url")
        return self


class SandboxSettings(Section):
    """The operating-system sandbox of tools that run programs (bubblewrap)."""

    enabled: bool = Field(
        True,
        description="Tools that run programs need the sandbox; off, they refuse to run "
        "(never run unconfined).",
    )
    bwrap: str = Field("bwrap", description="The bubblewrap program (name or path).")
    uid: int = Field(
        65534,
        ge=1,
        description="User programs run as when the server runs as root (a dedicated, "
        "unused uid is best; 65534 is nobody). Otherwise they run as the server's user.",
    )
    gid: int = Field(65534, ge=1, description="Group programs run as when the server is root.")
    tmp_mb: int = Field(64, ge=1, description="Size of the sandbox's own /tmp.")


class AgentSettings(Section):
    """Agents and their tools."""

    workspace_root: Path | None = Field(
        None,
        description="Where each workspace's files live (tools are confined to its "
        "folder). Default: <data_dir>/workspaces.",
    )
    max_iterations: int = Field(15, ge=1, le=100, description="Tool calls per answer, at most.")
    max_seconds: float = Field(300.0, gt=0, description="Wall-clock budget of one answer.")
    max_tokens: int = Field(
        30_000, ge=1000, description="Model tokens (prompt + output) one answer may spend."
    )
    step_tokens: int = Field(512, ge=64, le=8192, description="Output tokens of one step.")
    written_answer: bool = Field(
        True,
        description="After tools were used, write the final answer in plain text from "
        "the whole run (one more, streamed, model call) instead of the one-line draft of "
        "the JSON step (backends without native tool calling).",
    )
    tools: dict[str, ToolSettings] = Field(
        default_factory=dict, description="Per-tool switches, by tool name."
    )
    docker_socket: Path | None = Field(
        None,
        description="Docker Engine API socket (e.g. /var/run/docker.sock): enables the "
        "docker tools (list, inspect, logs; restart needs enabling).",
    )
    ssh: dict[str, SshHostSettings] = Field(
        default_factory=dict, description="Hosts the ssh tool may reach, by name."
    )
    shell: ShellSettings = Field(
        default_factory=ShellSettings,
        description="The shell and python tools: text policy and limits.",
    )
    sandbox: SandboxSettings = Field(
        default_factory=SandboxSettings,
        description="The operating-system sandbox of tools that run programs.",
    )
    network: NetworkToolSettings = Field(
        default_factory=NetworkToolSettings, description="Tools that reach other machines."
    )
    approvers: Literal["requester", "admin"] = Field(
        "requester",
        description="Who may approve a paused tool call: the person who asked (or an "
        "admin of the workspace), or workspace admins only.",
    )
    approval_ttl_seconds: int = Field(
        86_400, ge=60, description="A pending approval expires after this long."
    )
    mcp_servers: dict[str, McpServerSettings] = Field(
        default_factory=dict,
        description="MCP servers whose tools join the registry, as <server>__<tool>.",
    )

    @field_validator("mcp_servers")
    @classmethod
    def _server_names(cls, value: dict[str, McpServerSettings]) -> dict[str, McpServerSettings]:
        for name in value:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,30}", name):
                raise ValueError(
                    f"MCP server name {name!r}: lower-case letters, digits and _ (≤ 31)"
                )
        return value

    mcp_endpoint: bool = Field(
        True,
        description="Serve the tools over MCP (Streamable HTTP) at /mcp, for API keys "
        "with the tools scope.",
    )
