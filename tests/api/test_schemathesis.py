"""Property test of the whole HTTP surface: schemathesis generates requests from the
app's own OpenAPI schema and sends them, with an admin token so that the commands run
too, to a real `python -m services.api` process on a database of its own (seeded like
the other API tests) and the session's broker. No input may get a 5xx.

The event stream is left out: it never ends, by design (tests/api/test_events.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from services.common.db import migrate
from services.common.embedded import EmbeddedBroker, free_port, wait_port

from .conftest import ADMIN, EVAC_DONE, TOKENS, VM_DOWN_2, VM_FREE, on_server, seed

ROOT = Path(__file__).parents[2]
EXAMPLES = int(os.environ.get("EVACUATE_SCHEMATHESIS_EXAMPLES", "6"))  # per operation and round: under a minute


@pytest.fixture(scope="module")
def fuzz_api(database_url: str, broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Its own database: generated commands (templates, flags) must not change what other tests read."""
    name = f"evacuate_fuzz_{uuid.uuid4().hex[:10]}"
    asyncio.run(on_server(database_url, f'CREATE DATABASE "{name}"'))
    parts = urlsplit(database_url)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    asyncio.run(migrate(url))
    asyncio.run(seed(url))
    port = free_port()
    env = dict(os.environ, EVACUATE_DATABASE_URL=url, EVACUATE_KAFKA_BOOTSTRAP=broker.bootstrap,
               EVACUATE_API_TOKENS=TOKENS, EVACUATE_API_PORT=str(port), PYTHONUNBUFFERED="1")
    log_path = Path(tmp_path_factory.mktemp("fuzz")) / "api.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "services.api"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=ROOT)
    try:
        wait_port(port, timeout=30, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        asyncio.run(on_server(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# Path parameters that name seeded rows, so that generated bodies and queries also reach
# the code past the 404 (a real host's commands, a real instance's update).
KNOWN = {"name": "down2", "instance_uuid": VM_FREE, "evacuation_id": EVAC_DONE, "server_id": VM_DOWN_2}


def rounds(operation: Any) -> list[tuple[GenerationMode, dict[str, Any] | None]]:
    out: list[tuple[GenerationMode, dict[str, Any] | None]] = [(GenerationMode.POSITIVE, None)]
    typed_path = any(set(p.definition.get("schema", {})) & {"format", "enum", "pattern"}
                     for p in operation.path_parameters)
    if list(operation.query) or list(operation.body) or typed_path:  # else nothing is invalid but the token
        out.append((GenerationMode.NEGATIVE, None))
    names = [p.name for p in operation.path_parameters]
    known = {n: KNOWN[n] for n in names if n in KNOWN}
    if known:
        out.append((GenerationMode.POSITIVE, known))
    return out


def test_no_input_gets_a_server_error(fuzz_api: str) -> None:
    """Every operation of the schema: valid and invalid generated input, and valid input on
    seeded rows, EXAMPLES cases each; all failures are collected, then reported."""
    schema = schemathesis.openapi.from_url(f"{fuzz_api}/openapi.json").exclude(path="/v1/events/stream")
    headers = {"Authorization": f"Bearer {ADMIN}", "X-Auth-Token": ADMIN}
    failures: list[str] = []
    operations = 0
    statuses: Counter[int] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode, path in rounds(operation):

            @given(case=operation.as_strategy(mode, path_parameters=path))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            def run(case: schemathesis.Case) -> None:
                response = case.call(headers=headers, timeout=10)
                statuses[response.status_code] += 1
                case.validate_response(response, checks=[not_a_server_error])

            try:
                run()
            except Unsatisfiable:
                pass  # nothing invalid to generate (no parameters, or only free strings): positive covers it
            except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then report them all
                failures.append(f"{operation.label} ({mode.value}, path {path}): {exc}"[:3000])
    assert operations > 10, "the schema lost its operations"
    print(f"{operations} operations, responses by status: {dict(sorted(statuses.items()))}")
    assert not failures, "\n\n".join(failures)
    assert statuses[200] and statuses[404] and statuses[422], statuses  # the token worked; bad input was refused
