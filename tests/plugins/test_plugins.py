"""One plugin registry: built-ins and third-party plugins take the same road; an unusable
plugin stops the start with its name; a parser plugin reaches the parser processes."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from concilium.knowledge import parsing
from concilium.plugins import KINDS, Plugin, PluginError, discover
from concilium.services import Services
from tests.conftest import SettingsFactory

REPO = Path(__file__).resolve().parents[2]


def _package(root: Path, name: str, entry_points: str, module: str) -> Path:
    """An installed distribution, as pip would leave it: a module and its dist-info."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.py").write_text(textwrap.dedent(module))
    info = root / f"{name}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return root


def _forget_parsers(extensions: dict[str, str]) -> None:
    """The next load sees exactly what is installed now."""
    parsing._PARSERS.clear()
    parsing._EXTENSIONS.clear()
    parsing._EXTENSIONS.update(extensions)
    parsing._LOADED = False


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """``installed(name, entry_points, module)`` puts a plugin package on the path."""
    parsing.load_parsers()
    extensions = dict(parsing._EXTENSIONS)

    def install(name: str, entry_points: str, module: str) -> Path:
        root = _package(tmp_path / name, name, entry_points, module)
        monkeypatch.delitem(sys.modules, name, raising=False)  # one module, fresh each test
        monkeypatch.syspath_prepend(str(root))
        importlib.invalidate_caches()
        _forget_parsers(extensions)
        return root

    yield install
    _forget_parsers(extensions)  # the plugin's formats leave with it


NOTE_PLUGIN = """
    import os
    from concilium.knowledge.parsing.base import Block, ParsedDocument

    def parse_note(data):
        lines = data.decode().splitlines()
        # Where it ran: the tests check the parser processes have the plugin.
        body = [Block("paragraph", line) for line in lines[1:]]
        body.append(Block("paragraph", f"parsed in process {os.getpid()}"))
        return ParsedDocument(kind="note", title=lines[0], blocks=body)

    parse_note.extensions = (".note",)
"""


@pytest.mark.parametrize(
    ("kind", "entry", "module", "problem"),
    [
        ("parsers", "broken = bad_plugin:missing", "x = 1\n", "cannot be imported"),
        ("parsers", "broken = bad_plugin:x", "x = 1\n", "1 is not callable"),
        ("embedders", "broken = bad_plugin:x", "x = 'no'\n", "is not an Embedder subclass"),
        ("backends", "broken = bad_plugin:x", "x = object\n", "is not a Backend subclass"),
        ("tools", "broken = bad_plugin:x", "x = [1]\n", "1 is not a Tool"),
        (
            "backends",
            "openai = bad_plugin:x",
            "from concilium.llm.backends.ollama import OllamaBackend as x\n",
            "has the name of backends plugin 'openai'",
        ),
    ],
)
def test_an_unusable_plugin_stops_the_start_naming_itself(
    installed, make_settings: SettingsFactory, kind: str, entry: str, module: str, problem: str
) -> None:  # type: ignore[no-untyped-def]
    installed("bad_plugin", f"[{KINDS[kind].group}]\n{entry}\n", module)
    with pytest.raises(PluginError) as raised:
        services = Services.build(make_settings())
        if kind == "parsers":  # parsers load when the services start
            parsing.load_parsers()
        del services
    message = str(raised.value)
    assert problem in message
    assert "from bad_plugin 1.2.3" in message


def test_concilium_plugins_list_says_where_each_came_from(tmp_path: Path) -> None:
    root = _package(
        tmp_path / "site",
        "notes_plugin",
        "[concilium.parsers]\nnote = notes_plugin:parse_note\nbad = notes_plugin:nothing\n",
        NOTE_PLUGIN,
    )
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "200"}
    command = [sys.executable, "-m", "concilium", "plugins", "list"]
    listed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert listed.returncode == 0, listed.stderr
    assert "notes_plugin 1.2.3" in listed.stdout
    assert "concilium.llm.backends.embedded:EmbeddedBackend" in listed.stdout
    checked = subprocess.run(
        [*command, "--kind", "parsers", "--check"], env=env, capture_output=True, text=True
    )
    assert checked.returncode == 1
    assert "parsers plugin 'bad' (notes_plugin:nothing, from notes_plugin 1.2.3)" in " ".join(
        checked.stderr.split()
    )


def test_every_kind_is_documented_and_every_builtin_is_tested() -> None:
    """A kind without a section of docs/plugins.md, or a built-in plugin no test names
    (by its name, its object, or — for a parser — a file of its format), fails here."""
    guide = (REPO / "docs" / "plugins.md").read_text()
    for kind in KINDS.values():
        assert f"## {kind.section}" in guide, kind.name
        assert kind.group in guide, kind.name
    tests = "\n".join(
        path.read_text() for path in (REPO / "tests").rglob("*.py") if path != Path(__file__)
    )
    parsing.load_parsers()
    extensions = {
        name: [e for e, f in parsing._EXTENSIONS.items() if f == name] for name in parsing._PARSERS
    }
    builtins = [p for p in discover() if p.builtin]
    assert {p.kind for p in builtins} == set(KINDS) - {"tools"}  # built-in tools need settings

    def tested(plugin: Plugin) -> bool:
        names = [f'"{plugin.name}"', plugin.value.split(":")[1]]
        if plugin.kind == "parsers":
            names += [f'{e}"' for e in extensions.get(plugin.name, [])]
        return any(name in tests for name in names)

    assert not [p.describe() for p in builtins if not tested(p)]


KINDS_PLUGIN = """
    from concilium.events import Done, Token, Usage
    from concilium.knowledge.rerank import Reranker
    from concilium.orchestrator.consensus import ConsensusStrategy, Verdict

    class Echo:
        name = "echo"

        def __init__(self, context):
            self.context = context

        async def run(self, prepared):
            yield Token("echo: " + prepared.request.messages[-1].content)
            yield Usage(0, 0)
            yield Done("stop")

    def echo(context):
        return Echo(context)

    class First(ConsensusStrategy):
        async def decide(self, ballot):
            yield Token(ballot.answers[0].text)
            yield Verdict("first", ballot.answers[0].index)

    class Shortest(Reranker):
        @classmethod
        def configured(cls, name, config, settings, router):
            made = cls()
            made.name = name
            return made

        async def score(self, query, passages):
            return [-float(len(p)) for p in passages]
"""
KINDS_ENTRY_POINTS = """
    [concilium.modes]
    echo = kinds_plugin:echo
    [concilium.consensus_strategies]
    first = kinds_plugin:First
    [concilium.rerankers]
    shortest = kinds_plugin:Shortest
"""


async def test_modes_strategies_and_rerankers_from_a_plugin_are_used(
    installed, make_settings: SettingsFactory
) -> None:  # type: ignore[no-untyped-def]
    from concilium.llm.base import ChatMessage
    from concilium.orchestrator.request import AnswerOptions, AnswerRequest
    from concilium.services import running_services

    installed("kinds_plugin", KINDS_ENTRY_POINTS, KINDS_PLUGIN)
    settings = make_settings(
        knowledge={"rerankers": {"short": {"kind": "shortest"}}},
        orchestration={
            "consensus": {"quick": {"strategy": "first", "workers": [{"model": "default"}]}}
        },
    )
    async with running_services(settings) as services:
        request = AnswerRequest([ChatMessage("user", "hi")], AnswerOptions(mode="echo"))
        events = [e async for e in services.orchestrator.answer(request)]
        assert "".join(getattr(e, "text", "") for e in events) == "echo: hi"
        consensus = services.orchestrator.modes["consensus"]
        assert type(consensus.strategies["first"]).__name__ == "First"  # type: ignore[attr-defined]
        reranker = services.knowledge.rerankers.get("short")
        assert await reranker.score("q", ["long passage", "short"]) == [-12.0, -5.0]


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        (
            {"knowledge": {"rerankers": {"x": {"kind": "missing"}}}},
            "reranker 'x' is of kind 'missing', which no installed plugin provides",
        ),
        (
            {
                "orchestration": {
                    "consensus": {"p": {"strategy": "missing", "workers": [{"model": "m"}]}}
                }
            },
            "consensus profile 'p' uses strategy 'missing', which no installed plugin provides",
        ),
    ],
)
def test_a_setting_naming_what_no_plugin_provides_stops_the_start(
    make_settings: SettingsFactory, section: dict[str, object], problem: str
) -> None:
    with pytest.raises(PluginError, match=problem):
        Services.build(make_settings(**section))
