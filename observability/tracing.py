"""OpenTelemetry traces, opt-in by the standard OTEL_* variables (settings.trace_exporter).

On, one trace runs from an HTTP request (FastAPI's own span, api/app.py TELEMETRY) through the
Temporal client's StartWorkflow and UpdateWorkflow spans (the SDK's TracingInterceptor, on every
client this project connects: temporal_client.connect) into the worker's workflow and activity
spans, down to the SendGrid call (activities/mailer.py). Off, nothing is installed: no interceptor,
no provider, and FastAPI skips its tracing.

The SDK reads the details itself: OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (for example
`parentbased_traceidratio` and `0.1`), OTEL_EXPORTER_OTLP_ENDPOINT / _HEADERS, OTEL_BSP_*.
"""

from __future__ import annotations

from opentelemetry import trace


def active() -> bool:
    """True once a tracer provider is installed (by `configure`, or a test's `install`)."""
    return not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def configure(settings, default_service_name: str) -> bool:
    """Install a provider exporting as OTEL_* asks; False (and nothing installed) when traces are off."""
    exporter_name = settings.trace_exporter
    if exporter_name is None:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    else:
        exporter = ConsoleSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": settings.otel_service_name or default_service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    return True


def install(provider) -> None:
    trace.set_tracer_provider(provider)


def shutdown() -> None:
    """Export what is buffered: the worker leaves with os._exit, which skips the SDK's atexit hook."""
    provider = trace.get_tracer_provider()
    if active() and hasattr(provider, "shutdown"):
        provider.shutdown()


def temporal_interceptors() -> list:
    """The SDK's tracing interceptor while tracing is on (client and worker take it from the client)."""
    if not active():
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor()]
