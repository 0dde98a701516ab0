"""Point 2: no known webhook secret. Outside `takeback dev`, the API and the worker refuse to start
without TAKEBACK_CARRIER_WEBHOOK_SECRET of at least 32 bytes that is not a published default;
several secrets may be listed at once (rotation); compose has no default for it."""

import os
import secrets
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from settings import Settings
from tests.postgres import _free_port
from tests.security.compose_helpers import SERVICES

ROOT = Path(__file__).resolve().parents[2]
STRONG = secrets.token_hex(32)
KNOWN = ["dev-carrier-secret", "change-me", "test-webhook-secret", "walkthrough-secret"]


def production_env(tmp_path: Path, **values: str) -> dict:
    """A production process's environment: no test mode, mail to files asked for, Temporal not there."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TAKEBACK_", "SENDGRID_", "TEMPORAL_"))}
    env.update(TAKEBACK_DATA_DIR=str(tmp_path), TAKEBACK_MAIL_OUTBOX="true", TEMPORAL_ADDRESS=f"127.0.0.1:{_free_port()}")
    env.update(values)
    return env


def start(command: str, env: dict, port: int | None = None) -> subprocess.CompletedProcess | None:
    """Run `takeback <command>`; its result if it exits within 20 s, None if it is still serving."""
    args = [sys.executable, "-m", "cli", command] + (["--port", str(port)] if port else [])
    process = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=20)
        return subprocess.CompletedProcess(args, process.returncode, out, err)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return None


@pytest.mark.parametrize("secret", [None, *KNOWN, "x" * 31, "short-but-not-known"])
def test_the_api_refuses_to_start_on_a_missing_short_or_known_secret(tmp_path, secret):
    values = {} if secret is None else {"TAKEBACK_CARRIER_WEBHOOK_SECRET": secret}
    result = start("api", production_env(tmp_path, **values), port=_free_port())
    assert result is not None, f"the API served with webhook secret {secret!r}"
    assert result.returncode != 0 and "TAKEBACK_CARRIER_WEBHOOK_SECRET" in result.stderr
    if secret:
        assert secret not in result.stderr  # the refusal does not print the secret


def test_the_worker_refuses_to_start_on_a_known_secret(tmp_path):
    result = start("worker", production_env(tmp_path, TAKEBACK_CARRIER_WEBHOOK_SECRET="dev-carrier-secret"))
    assert result is not None and result.returncode == 2 and "TAKEBACK_CARRIER_WEBHOOK_SECRET" in result.stderr


def test_the_api_starts_with_strong_secrets_two_at_once_during_a_rotation(tmp_path):
    port = _free_port()
    env = production_env(tmp_path, TAKEBACK_CARRIER_WEBHOOK_SECRET=f"{STRONG},{secrets.token_urlsafe(32)}")
    process = subprocess.Popen([sys.executable, "-m", "cli", "api", "--port", str(port)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        assert process.poll() is None, process.stderr.read()
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_settings_list_every_secret_of_a_rotation_and_judge_each():
    rotation = Settings(env="production", carrier_webhook_secret=f" {STRONG} , dev-carrier-secret ", mail_outbox=True)
    assert rotation.carrier_webhook_secrets == [STRONG.encode(), b"dev-carrier-secret"]
    assert rotation.startup_problems() == ["TAKEBACK_CARRIER_WEBHOOK_SECRET #2 is a published default"]
    assert Settings(env="production", carrier_webhook_secret="a" * 64, mail_outbox=True).startup_problems()  # long, not random
    assert Settings(env="production", carrier_webhook_secret=STRONG, mail_outbox=True).startup_problems() == []
    # Tests and `takeback dev` may run on any secret, or none (the webhook then answers 503).
    assert Settings(env="test", carrier_webhook_secret="test-webhook-secret").startup_problems() == []
    assert Settings(env="development").startup_problems() == []


def test_dev_makes_a_random_secret_per_data_dir_and_keeps_it(tmp_path):
    from cli import _dev_webhook_secret

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    first, again, other = _dev_webhook_secret(tmp_path / "a"), _dev_webhook_secret(tmp_path / "a"), _dev_webhook_secret(tmp_path / "b")
    assert first == again != other and len(first) == 64 and Settings(env="production", carrier_webhook_secret=first, mail_outbox=True).startup_problems() == []
    assert stat.S_IMODE((tmp_path / "a" / "carrier-webhook-secret").stat().st_mode) == 0o600


def test_compose_has_no_default_webhook_secret():
    for name in ("api", "worker-blue", "worker-green"):
        value = SERVICES[name]["environment"]["TAKEBACK_CARRIER_WEBHOOK_SECRET"]
        assert value.startswith("${TAKEBACK_CARRIER_WEBHOOK_SECRET:?"), f"{name}: {value}"
        assert SERVICES[name]["environment"]["TAKEBACK_ENV"] == "production"
