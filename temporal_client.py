"""The one way this project connects to Temporal: pydantic data converter, TLS / API key."""

from temporalio.client import Client, TLSConfig
from temporalio.contrib.pydantic import pydantic_data_converter

from settings import Settings


async def connect(settings: Settings, **options) -> Client:
    tls: TLSConfig | bool = settings.temporal_tls or bool(settings.temporal_api_key)
    if settings.temporal_tls_cert and settings.temporal_tls_key:
        tls = TLSConfig(client_cert=settings.temporal_tls_cert.read_bytes(), client_private_key=settings.temporal_tls_key.read_bytes())
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        api_key=settings.temporal_api_key,
        tls=tls,
        data_converter=pydantic_data_converter,
        **options,
    )
