"""Schemathesis against the live OpenAPI description, authenticated as an administrator:
every operation, generated valid and invalid inputs; no 5xx and no response that breaks
the documented status codes, media types or schemas."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from concilium.api.app import create_app
from concilium.config import Settings
from concilium.services import Services
from tests.conftest import MODELS_DIR
from tests.support.fake_llm_servers import FakeOpenAI
from tests.support.live import Live
from tests.support.servers import serve_app, serve_in_thread

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    fake = FakeOpenAI()
    with serve_in_thread(fake.app()) as upstream:
        config = Settings(
            data_dir=tmp_path_factory.mktemp("fuzz"),
            models_dir=MODELS_DIR,
            backends={
                "r": {"type": "openai", "base_url": upstream + "/v1", "models": ["fake-model"]}
            },
            chat={"default_model": "fake-model"},
            logging={"level": "WARNING"},
            auth={
                "argon2_time_cost": 1,
                "argon2_memory_kib": 8192,
                "cookie_secure": False,
                "login_max_failures": 1000,
            },
            limits={
                "ip_per_minute": 0,
                "user_per_minute": 0,
                "key_per_minute": 0,
                "login_per_minute": 0,
            },
        )
        services = Services.build(config)
        with serve_app(create_app(config, services)) as running:
            live = Live(running, services)
            yield live
            live.close()


# The description comes from an app object built here (no I/O): each operation becomes a
# test of its own. It is the same code the live server below serves.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


def test_the_served_description_is_the_one_fuzzed(fuzz_server: Live) -> None:
    served = fuzz_server.http.get("/openapi.json").json()
    assert served["paths"].keys() == schema.raw_schema["paths"].keys()


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_no_schema_violations(case: Any, fuzz_server: Live) -> None:
    case.call_and_validate(
        base_url=fuzz_server.url,
        headers={"Authorization": f"Bearer {fuzz_server.admin_key}"},
        checks=CHECKS,
        timeout=30,
    )
