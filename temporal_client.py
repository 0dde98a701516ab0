"""The one way this project connects to Temporal: the data converter (pydantic, plus the payload
codec when keys are set), TLS (a private CA, the server's name, client certificates) and API key."""

import dataclasses
from pathlib import Path

from temporalio.client import Client, TLSConfig
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes

from codec import codec_from_settings
from observability.tracing import temporal_interceptors
from settings import Settings


def dev_server_file_args(db_file: Path) -> list[str]:
    """`temporal server start-dev` arguments keeping its state in `db_file`, in SQLite's WAL mode.

    The dev server opens its file in SQLite's default rollback-journal mode with a full sync: every
    commit rewrites a journal and syncs it more than once. In WAL mode (synchronous=normal) a commit
    appends to one log; measured in a 2,000-deal deadline storm (bench/deadline_storm.py): deals
    decided 26/s instead of 17/s, reminders run before the deadline 1,948 instead of 1,116. What a
    process crash leaves is the same (committed is committed); a power cut can lose the last
    commits, which the engine then redoes: our activities are idempotent and the store holds one
    settlement a deal. Production runs a Temporal cluster, not this server.
    """
    return ["--db-filename", str(db_file), "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal"]


def data_converter(settings: Settings) -> DataConverter:
    """Pydantic payloads; with TAKEBACK_PAYLOAD_KEYS also sealed with AES-GCM, failure messages and
    stack traces included (they can quote personal data). Workers take their client's converter;
    a Replayer must be given this one."""
    codec = codec_from_settings(settings)
    if codec is None:
        return pydantic_data_converter
    return dataclasses.replace(pydantic_data_converter, payload_codec=codec, failure_converter_class=DefaultFailureConverterWithEncodedAttributes)


def tls_config(settings: Settings) -> TLSConfig | bool:
    """TLS as the settings ask: a TLSConfig for a private CA, a server name or a client certificate;
    True for TLS with the system's roots (TEMPORAL_TLS, or an API key); False for plaintext."""
    custom = settings.temporal_tls_ca or settings.temporal_tls_server_name or settings.temporal_tls_cert
    if not custom:
        return settings.temporal_tls or bool(settings.temporal_api_key)
    if bool(settings.temporal_tls_cert) != bool(settings.temporal_tls_key):
        raise ValueError("TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH go together")
    return TLSConfig(
        server_root_ca_cert=settings.temporal_tls_ca.read_bytes() if settings.temporal_tls_ca else None,
        domain=settings.temporal_tls_server_name or None,
        client_cert=settings.temporal_tls_cert.read_bytes() if settings.temporal_tls_cert else None,
        client_private_key=settings.temporal_tls_key.read_bytes() if settings.temporal_tls_key else None,
    )


async def connect(settings: Settings, **options) -> Client:
    # While traces are on (observability/tracing.py), the SDK's tracing interceptor carries the
    # caller's span into the workflow and its activities; a worker built on this client takes it too.
    interceptors = [*temporal_interceptors(), *options.pop("interceptors", [])]
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        api_key=settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None,
        tls=tls_config(settings),
        data_converter=data_converter(settings),
        interceptors=interceptors,
        **options,
    )


def call_timed_out(error: BaseException) -> bool:
    """A call to the engine that ran out of time: the server's deadline, or the SDK's own rpc_timeout,
    which surfaces as CANCELLED "Timeout expired" (seen under load on queries)."""
    from temporalio.service import RPCError, RPCStatusCode

    if not isinstance(error, RPCError):
        return False
    return error.status == RPCStatusCode.DEADLINE_EXCEEDED or (error.status == RPCStatusCode.CANCELLED and "timeout" in str(error).lower())
