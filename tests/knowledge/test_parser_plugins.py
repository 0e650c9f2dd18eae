"""A parser plugin (an entry point of another package) is read in the parser processes."""

from __future__ import annotations

import os
import re

from concilium.auth.principal import OPERATOR
from concilium.knowledge.service import Upload
from tests.knowledge.conftest import KnowledgeFactory
from tests.plugins.test_plugins import NOTE_PLUGIN, installed

__all__ = ["installed"]


async def test_a_parser_plugin_reaches_the_parser_processes(
    installed,
    make_knowledge: KnowledgeFactory,  # type: ignore[no-untyped-def]
) -> None:
    installed("notes_plugin", "[concilium.parsers]\nnote = notes_plugin:parse_note\n", NOTE_PLUGIN)
    knowledge = await make_knowledge(knowledge={"parse_workers": 1})
    cid = await knowledge.collection()
    job = await knowledge.service.ingest(
        OPERATOR, cid, [Upload("boiler.note", b"Boiler\nServiced every October.\n")]
    )
    report = await knowledge.run(job.id)
    assert report.progress.indexed == 1, report.failures
    [(document, _, _)], _ = await knowledge.service.list_documents(OPERATOR, cid)
    assert document.title == "Boiler"
    chunks = await knowledge.service.chunks(OPERATOR, document.id)
    where = re.search(r"parsed in process (\d+)", " ".join(c.text for c in chunks))
    assert where is not None
    assert int(where.group(1)) != os.getpid()  # a spawned parser process read it
