"""A small MCP server made with the official SDK (FastMCP): Concilium's MCP client is
tested against it, over stdio (``python -m tests.support.mcp_demo``) and Streamable HTTP
(``build().streamable_http_app()``)."""

from __future__ import annotations

from mcp.server.fastmcp import FastMCP


def build() -> FastMCP:
    server = FastMCP("demo", stateless_http=True, json_response=True)

    @server.tool()
    def add(a: int, b: int) -> str:
        """Add two integers."""
        return str(a + b)

    @server.tool(name="Shout-Text")
    def shout(text: str) -> str:
        """Upper-case a text."""
        return text.upper()

    @server.tool()
    def explode() -> str:
        """Always fails."""
        raise ValueError("it broke")

    return server


if __name__ == "__main__":
    build().run("stdio")
