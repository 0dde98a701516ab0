"""mTLS between compose's services and Temporal (deploy/compose.temporal-mtls.yml), checked by parsing both
compose files, making the certificates with deploy/temporal-tls/make-certs.sh, and a real TLS handshake
of the app's Temporal client (temporal_client.tls_config) against a server that requires client certs."""

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from temporalio.client import Client, TLSConfig

from settings import Settings
from temporal_client import tls_config
from tests.test_compose import ROOT, SERVICES, WORKERS, env_of, resolve

OVERRIDE = yaml.safe_load((ROOT / "deploy/compose.temporal-mtls.yml").read_text())["services"]
CERTS = ROOT / "deploy/temporal-tls/certs"  # where make-certs.sh writes, and every service mounts
APP_CLIENTS = ("api", *WORKERS)


def tls_env(name: str) -> dict:
    """The service's environment with the override applied (compose merges environment maps)."""
    return env_of(name) | {key: str(value) for key, value in OVERRIDE[name].get("environment", {}).items()}


def cert_mount(name: str) -> str:
    """Where the service sees the certificates folder (the override mounts it read-only)."""
    (target,) = [v.split(":")[1] for v in OVERRIDE[name]["volumes"] if (ROOT / v.split(":")[0]).resolve() == CERTS.resolve() and v.endswith(":ro")]
    return target


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: make-certs.sh needs it")
    folder = tmp_path_factory.mktemp("temporal-tls")
    run = subprocess.run(["sh", str(ROOT / "deploy/temporal-tls/make-certs.sh"), str(folder)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return folder


def on_host(path: str, mount: str, certs: Path) -> Path:
    assert path.startswith(mount + "/"), f"{path} is not in the mounted certificates folder {mount}"
    return certs / path.removeprefix(mount + "/")


def test_the_server_requires_client_certificates_of_the_ca(certs):
    env, mount = tls_env("temporal"), cert_mount("temporal")
    assert env["TEMPORAL_TLS_REQUIRE_CLIENT_AUTH"] == "true"
    for variable in ("TEMPORAL_TLS_SERVER_CERT", "TEMPORAL_TLS_SERVER_KEY", "TEMPORAL_TLS_FRONTEND_CERT", "TEMPORAL_TLS_FRONTEND_KEY",
                     "TEMPORAL_TLS_SERVER_CA_CERT", "TEMPORAL_TLS_CLIENT1_CA_CERT"):
        assert on_host(env[variable], mount, certs).is_file(), variable
    assert env["TEMPORAL_TLS_FRONTEND_DISABLE_HOST_VERIFICATION"] == env["TEMPORAL_TLS_INTERNODE_DISABLE_HOST_VERIFICATION"] == "false"
    server = x509.load_pem_x509_certificate(on_host(env["TEMPORAL_TLS_FRONTEND_CERT"], mount, certs).read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert env["TEMPORAL_TLS_FRONTEND_SERVER_NAME"] in names and "temporal" in names  # the name clients dial: the service's
    usages = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages and ExtendedKeyUsageOID.CLIENT_AUTH in usages  # its own services are clients too
    assert "--tls-cert-path" in " ".join(OVERRIDE["temporal"]["healthcheck"]["test"])  # the healthcheck speaks mTLS too


def test_every_client_of_temporal_presents_a_certificate_and_checks_the_servers_name(certs):
    ca = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    for name in (*APP_CLIENTS, "temporal-create-namespace"):
        env, mount = tls_env(name), cert_mount(name)
        assert env["TEMPORAL_TLS_SERVER_NAME"] == "temporal"
        cert = x509.load_pem_x509_certificate(on_host(env["TEMPORAL_TLS_CLIENT_CERT_PATH"], mount, certs).read_bytes())
        assert cert.issuer == ca.subject and ExtendedKeyUsageOID.CLIENT_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert on_host(env["TEMPORAL_TLS_CLIENT_KEY_PATH"], mount, certs).is_file() and on_host(env["TEMPORAL_TLS_CA_PATH"], mount, certs).is_file()
    ui, mount = tls_env("temporal-ui"), cert_mount("temporal-ui")
    assert ui["TEMPORAL_TLS_ENABLE_HOST_VERIFICATION"] == "true" and ui["TEMPORAL_TLS_SERVER_NAME"] == "temporal"
    assert all(on_host(ui[variable], mount, certs).is_file() for variable in ("TEMPORAL_TLS_CA", "TEMPORAL_TLS_CERT", "TEMPORAL_TLS_KEY"))
    assert set(OVERRIDE) <= set(SERVICES)  # no service of its own: it only adds to the stack's


def app_settings(certs: Path, name: str = "worker-blue", **changes) -> Settings:
    """The settings the service would read with the override on, its container paths mapped to `certs`."""
    mount = cert_mount(name)
    env = {key: resolve(value) for key, value in tls_env(name).items()}
    env = {key: str(on_host(value, mount, certs)) if value.startswith(mount + "/") else value for key, value in env.items()}
    return Settings.model_validate(env | changes)


def test_the_app_builds_its_tls_client_config_from_the_compose_environment(certs):
    for name in APP_CLIENTS:
        settings = app_settings(certs, name, TAKEBACK_MAIL_OUTBOX="true")
        assert settings.startup_problems() == []  # every file is there
        tls = tls_config(settings)
        assert isinstance(tls, TLSConfig)
        assert (tls.server_root_ca_cert, tls.client_cert, tls.client_private_key) == (
            (certs / "ca.pem").read_bytes(), (certs / "client.pem").read_bytes(), (certs / "client.key").read_bytes())
        assert tls.domain == "temporal"
    # Without the override nothing of it is set: plaintext, as before.
    assert tls_config(Settings.model_validate({key: resolve(value) for key, value in env_of("api").items()})) is False


class MutualTlsServer:
    """A TLS server requiring a client certificate of the CA (as Temporal's frontend with the override):
    records each handshake, its client's certificate name or why it failed. No gRPC behind it."""

    def __init__(self, certs: Path):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certs / "server.pem", certs / "server.key")
        self.context.load_verify_locations(certs / "ca.pem")
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.set_alpn_protocols(["h2"])
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.socket.getsockname()[1]}"
        self.handshakes: list[tuple[str, str]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(connection, server_side=True) as tls:
                    subject = dict(item[0] for item in tls.getpeercert()["subject"])
                    self.handshakes.append(("ok", subject["commonName"]))
            except (ssl.SSLError, OSError) as error:
                self.handshakes.append(("refused", type(error).__name__))
                connection.close()

    def close(self):
        self.socket.close()


async def handshake(server: MutualTlsServer, settings: Settings) -> tuple[str, str]:
    before = len(server.handshakes)
    with pytest.raises(Exception):  # no Temporal behind the handshake: the client's first call fails after it
        await asyncio.wait_for(Client.connect(server.address, tls=tls_config(settings)), 10)
    for _ in range(50):
        if len(server.handshakes) > before:
            return server.handshakes[before]
        await asyncio.sleep(0.1)
    return ("none", "the client never completed a handshake")


async def test_the_client_presents_its_certificate_and_refuses_a_server_of_another_name(certs):
    server = MutualTlsServer(certs)
    try:
        assert await handshake(server, app_settings(certs)) == ("ok", "takeback-client")
        # A server whose certificate does not carry the name asked for is refused by the client.
        assert (await handshake(server, app_settings(certs, TEMPORAL_TLS_SERVER_NAME="frontend.elsewhere.example")))[0] != "ok"
        # And a client without a certificate is refused by the server.
        anonymous = app_settings(certs).model_copy(update={"temporal_tls_cert": None, "temporal_tls_key": None})
        assert (await handshake(server, anonymous))[0] != "ok"
    finally:
        server.close()


def test_the_namespace_job_passes_the_tls_settings_to_the_cli(tmp_path):
    from tests.test_compose import fake_cli

    fake_cli(tmp_path, "temporal", "exit 0")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", **{key: resolve(value) for key, value in tls_env("temporal-create-namespace").items()}}
    run = subprocess.run(["sh", str(ROOT / "deploy/temporal-create-namespace.sh")], env=env, capture_output=True, text=True, timeout=20)
    assert run.returncode == 0, run.stderr
    mount = cert_mount("temporal-create-namespace")
    for call in (tmp_path / "calls").read_text().splitlines():
        assert f"--tls-ca-path {mount}/ca.pem --tls-cert-path {mount}/client.pem --tls-key-path {mount}/client.key --tls-server-name temporal" in call, call
