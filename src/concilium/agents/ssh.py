"""Running a command on a configured host over SSH (asyncssh).

Only hosts named in ``agents.ssh`` are reachable, with a key and a known_hosts file
(never a password, never an unknown host key). By default a host takes only read-only
commands (``policy.READ_ONLY_REMOTE_COMMANDS`` and the host's own ``commands``); its
``mode = "deny"`` opts into the local shell's checks instead, paths aside. The command is
checked before any connection is made. The other machine is not sandboxed: what a command
may do there is up to that machine's user and rules. Execute risk: off until enabled,
approval by default.
"""

from __future__ import annotations

from typing import Any

import asyncssh
from pydantic import BaseModel, ConfigDict, Field, create_model

from concilium.agents.policy import (
    READ_ONLY_REMOTE_COMMANDS,
    check_command,
    check_remote_command,
)
from concilium.agents.tools import Risk, Tool, ToolContext, ToolError
from concilium.config import ShellSettings, SshHostSettings

__all__ = ["SshTool"]


class SshTool(Tool):
    name = "ssh"
    description = (
        "Run a shell command on one of the configured hosts; returns exit code and output."
    )
    risk = Risk.EXECUTE

    def __init__(self, hosts: dict[str, SshHostSettings], shell: ShellSettings) -> None:
        self.hosts = hosts
        self.shell = shell
        self.timeout = shell.timeout_seconds + 15
        names = tuple(sorted(hosts))
        fields: dict[str, Any] = {
            "host": (str, Field(json_schema_extra={"enum": list(names)}, description="Host name.")),
            "command": (str, Field(min_length=1, max_length=10_000, description="The command.")),
        }
        self.Arguments = create_model(  # type: ignore[misc]
            "SshArguments", __config__=ConfigDict(extra="forbid"), **fields
        )

    async def run(self, arguments: BaseModel, context: ToolContext) -> str:
        host_name: str = arguments.model_dump()["host"]
        command: str = arguments.model_dump()["command"]
        host = self.hosts.get(host_name)
        if host is None:
            raise ToolError(f"no configured host {host_name!r}; known: {sorted(self.hosts)}")
        # Checked before any connection is made.
        if host.mode == "allow":
            check_remote_command(command, [*READ_ONLY_REMOTE_COMMANDS, *host.commands])
        else:
            check_command(command, None, allow=self.shell.allow, deny=self.shell.deny)
        try:
            async with asyncssh.connect(
                host.host,
                port=host.port,
                username=host.username,
                client_keys=[str(host.key_file)],
                known_hosts=str(host.known_hosts),
                password=None,
                agent_path=None,
                connect_timeout=10,
            ) as connection:
                result = await connection.run(
                    command,
                    check=False,
                    timeout=self.shell.timeout_seconds,
                    stderr=asyncssh.STDOUT,
                )
        except asyncssh.TimeoutError:
            raise ToolError(
                f"the command ran longer than {self.shell.timeout_seconds:g}s"
            ) from None
        except (OSError, asyncssh.Error) as exc:
            raise ToolError(f"ssh to {host_name}: {exc}") from None
        output = result.stdout if isinstance(result.stdout, str) else ""
        if len(output) > self.shell.output_chars:
            output = output[: self.shell.output_chars] + "\n… (output cut)"
        return f"exit code {result.exit_status}\n{output}"
