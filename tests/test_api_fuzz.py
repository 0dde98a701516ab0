"""Schema fuzzing with schemathesis against the running stack, with an ops and a partner key:
no 5xx, responses conform to the OpenAPI document, bad input gets problem+json."""

import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance
from hypothesis import HealthCheck, given, settings

from tests.postgres import _free_port

CASES: list[int] = []


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz")
    api_port, temporal_port = _free_port(), _free_port()
    dev = subprocess.Popen([sys.executable, "-m", "cli", "dev", "--data-dir", str(data), "--api-port", str(api_port), "--temporal-port", str(temporal_port)],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 60
        line = ""
        while time.monotonic() < deadline and not line.startswith("tbk_ops_"):
            line = dev.stdout.readline()
        url, ops = f"http://127.0.0.1:{api_port}", {"Authorization": f"Bearer {line.strip()}"}
        # Keep reading what the stack prints (its access log): a pipe nobody reads fills at 64 KB and
        # then blocks the API's next log line, and with it the API.
        threading.Thread(target=lambda: [None for _ in dev.stdout], daemon=True).start()
        r = httpx.post(f"{url}/v1/partners", json={"id": "FUZZ", "name": "Fuzz", "contact_email": "f@p.example", "country": "CA"}, headers=ops, timeout=20)
        assert r.status_code == 201, r.text
        key = subprocess.run([sys.executable, "-m", "cli", "apikey", "create", "--role", "partner", "--partner-id", "FUZZ", "--data-dir", str(data)],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        yield {"url": url, "ops": ops, "partner": {"Authorization": f"Bearer {key}"}}
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            dev.wait(timeout=40)
        except subprocess.TimeoutExpired:
            dev.kill()
        print(f"\nschemathesis cases run: {len(CASES)}")


def operations(url: str):
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def check(case, headers: dict, stack: dict) -> None:
    CASES.append(1)
    # Schema-valid bodies may still break a business rule (a serial on another deal, an
    # uncertified partner): those 4xx are right, so "positive data accepted" is not checked.
    response = case.call_and_validate(base_url=stack["url"], headers=headers, timeout=30, excluded_checks=[positive_data_acceptance])
    assert response.status_code < 500, response.text  # the stack is up: a 503 is a fault too
    if response.status_code >= 400:
        content_type = response.headers.get("content-type") or response.headers.get("Content-Type")
        assert str(content_type[0] if isinstance(content_type, list) else content_type).startswith("application/problem+json"), response.text
        assert {"type", "title", "status", "detail"} <= response.json().keys()


@pytest.mark.parametrize("who", ["ops", "partner"])
def test_fuzz_every_operation(stack, who):
    """Each operation of the OpenAPI document, with generated valid and invalid requests."""
    covered = []
    for operation in operations(stack["url"]):

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            check(case, stack[who], stack)

        fuzz()
        covered.append(f"{operation.method.upper()} {operation.path}")
    assert len(covered) >= 17, covered
