"""Point 9: secrets are SecretStr, compose has no default password, the API is published only
behind TLS, TLS to Temporal takes a private CA and the server's name, and production refuses a
SendGrid key set but empty instead of silently writing mail to files."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr
from temporalio.client import Client, TLSConfig

from settings import Settings
from tests.postgres import _free_port
from tests.security.compose_helpers import ROOT, SERVICES, env_of, port_mappings, resolve
from tests.security.test_webhook_secret import STRONG, production_env, start

SECRET_SETTINGS = {
    "TEMPORAL_API_KEY": "tmprl-api-key-value",
    "TAKEBACK_CARRIER_WEBHOOK_SECRET": STRONG,
    "SENDGRID_API_KEY": "SG.sendgrid-key-value",
    "TAKEBACK_PAYLOAD_KEYS": "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "TAKEBACK_CODEC_SERVER_TOKEN": "codec-token-value",
}


def test_every_secret_setting_is_a_secretstr_and_never_printed():
    settings = Settings.model_validate(SECRET_SETTINGS)
    by_alias = {}
    for name, field in Settings.model_fields.items():
        for alias in (field.alias, *getattr(field.validation_alias, "choices", ())):
            by_alias[alias] = name
    for alias, value in SECRET_SETTINGS.items():
        assert isinstance(getattr(settings, by_alias[alias]), SecretStr), f"{alias} is not a SecretStr"
        for shown in (repr(settings), str(settings), settings.model_dump_json()):
            assert value not in shown, f"{alias} is shown in clear"
    assert settings.sendgrid_api_key == "SG.sendgrid-key-value"  # the mailer still gets the key itself


def test_compose_sets_no_default_password_or_secret():
    secretish = re.compile(r"PASSWORD|PASSWD|PWD|SECRET|TOKEN|_KEY\b|_KEYS\b")
    for name, service in SERVICES.items():
        for key, value in env_of(name).items():
            for variable, default in re.findall(r"\$\{([A-Z0-9_]+):?-([^}]*)\}", value):
                assert not (secretish.search(variable) and default not in ("", "true", "false")), f"{name}: {key} defaults {variable} to {default!r}"
            if secretish.search(key) and "${" not in value:
                assert value in ("", "true", "false"), f"{name}: {key} is written in compose"
    for variable in ("POSTGRES_PASSWORD", "TAKEBACK_DB_PASSWORD", "TAKEBACK_CARRIER_WEBHOOK_SECRET"):
        assert f"${{{variable}:?" in (ROOT / "docker-compose.yml").read_text()


def test_the_api_is_published_only_behind_tls():
    assert port_mappings("api") == [], "the API is published in plain HTTP"
    proxies = [name for name, service in SERVICES.items() if str(service.get("image", "")).startswith(("caddy:", "nginx:"))]
    assert proxies == ["caddy"]
    assert [(ip, container) for ip, _, container in port_mappings("caddy")] == [("127.0.0.1", 443)]  # 0.0.0.0 only when asked
    assert SERVICES["caddy"]["depends_on"]["api"]["condition"] == "service_healthy"
    mounts = {target: ROOT / source for source, target, *_ in (str(v).split(":") for v in SERVICES["caddy"]["volumes"]) if source.startswith(".")}
    caddyfile = mounts["/etc/caddy/Caddyfile"].read_text()
    assert "reverse_proxy api:8000" in caddyfile
    code = "\n".join(line.split("#", 1)[0] for line in caddyfile.splitlines())
    assert "http://" not in code and "auto_https off" not in code and "tls off" not in code  # no plaintext site
    assert env_of("caddy")["TAKEBACK_DOMAIN"] and resolve(env_of("caddy")["TAKEBACK_DOMAIN"]) == "localhost"


async def test_tls_to_temporal_uses_the_private_ca_and_the_servers_name(tmp_path, monkeypatch):
    from temporal_client import connect

    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nprivate CA\n-----END CERTIFICATE-----\n")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_bytes(b"client cert")
    key.write_bytes(b"client key")
    seen = {}

    async def fake_connect(target, **options):
        seen.update(options, target=target)
        return "client"

    monkeypatch.setattr(Client, "connect", fake_connect)
    settings = Settings.model_validate({
        "TEMPORAL_ADDRESS": "temporal.internal:7233", "TEMPORAL_TLS_CA_PATH": str(ca), "TEMPORAL_TLS_SERVER_NAME": "frontend.temporal.example",
        "TEMPORAL_TLS_CLIENT_CERT_PATH": str(cert), "TEMPORAL_TLS_CLIENT_KEY_PATH": str(key), "TEMPORAL_API_KEY": "tmprl-key",
    })
    assert await connect(settings) == "client"
    tls = seen["tls"]
    assert isinstance(tls, TLSConfig)
    assert (tls.server_root_ca_cert, tls.domain, tls.client_cert, tls.client_private_key) == (ca.read_bytes(), "frontend.temporal.example", b"client cert", b"client key")
    assert seen["api_key"] == "tmprl-key"  # the SDK gets the key itself, not its mask
    # A CA file that is not there is a refusal to start, not a plaintext fallback.
    missing = Settings.model_validate({"TEMPORAL_TLS_CA_PATH": str(tmp_path / "nope.pem"), "TAKEBACK_ENV": "test"})
    assert any("TEMPORAL_TLS_CA_PATH" in problem for problem in missing.startup_problems())


@pytest.mark.parametrize("command", ["worker", "api"])
def test_sendgrid_configured_but_empty_refuses_to_start_in_production(tmp_path, command):
    env = production_env(tmp_path, TAKEBACK_CARRIER_WEBHOOK_SECRET=STRONG, SENDGRID_API_KEY="")
    env.pop("TAKEBACK_MAIL_OUTBOX")
    result = start(command, env, port=_free_port() if command == "api" else None)
    assert result is not None and result.returncode == 2, "started and would write mail to files"
    assert "SENDGRID_API_KEY is set but empty" in result.stderr
    assert not (tmp_path / "outbox").exists() or not any((tmp_path / "outbox").iterdir())
