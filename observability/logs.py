"""One line per event, as text for a terminal or JSON for a log pipeline (`TAKEBACK_LOG_FORMAT`).

A JSON line carries the ids an operator searches by, as fields: `request_id` (the API's
`X-Request-Id`), `deal_id`, `partner_id`, `workflow_id` and `run_id` (from the running activity
or workflow, or bound by the API for the request). Every record first goes through
`api.logsafe.SafeLogFilter`, so neither format carries keys, e-mail addresses or forged lines; the
JSON access line leaves out the caller's address.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar

from api.logsafe import SafeLogFilter, clean

# The API's request being served: its id, and the ids it bound (`bind`). One dict per request: each
# request runs in a task of its own, whose context starts as a copy of the server's.
_request: ContextVar[dict | None] = ContextVar("takeback_request", default=None)
ID_FIELDS = ("request_id", "deal_id", "partner_id", "workflow_id", "run_id")
WORKFLOW_PREFIXES = {"deal-": "deal_id", "partner-": "partner_id"}  # workflows.ids
ACCESS_LOGGER = "uvicorn.access"


def start_request(request_id: str, scope: dict) -> None:
    """The ids of the request now served: its own, and its path's deal or partner once routed."""
    _request.set({"request_id": request_id, "scope": scope})


def current_request_id() -> str | None:
    context = _request.get()
    return context["request_id"] if context is not None else None


def bind(**ids: str) -> None:
    """Ids the request learnt on its way (a booking's new deal id): its later lines carry them."""
    context = _request.get()
    if context is not None:
        context.update({name: value for name, value in ids.items() if value})


def current_ids(record: logging.LogRecord | None = None) -> dict[str, str]:
    """The ids of what is running: the API request, or the activity or workflow, or the record's own."""
    ids: dict[str, str] = {}
    context = _request.get()
    if context is not None:
        ids["request_id"] = context["request_id"]
        params = context["scope"].get("path_params") or {}
        for name in ("deal_id", "partner_id"):
            value = context.get(name) or params.get(name)
            if value:
                ids[name] = clean(str(value))[:200]  # a path parameter is what the caller sent
    temporal = _temporal_ids(record)
    workflow_id = temporal.get("workflow_id")
    if workflow_id:
        ids["workflow_id"] = workflow_id
        for prefix, field in WORKFLOW_PREFIXES.items():
            if workflow_id.startswith(prefix):
                ids.setdefault(field, workflow_id[len(prefix):])
    if temporal.get("run_id"):
        ids["run_id"] = temporal["run_id"]
    if record is not None:
        for name in ID_FIELDS:  # passed with extra={...}
            value = record.__dict__.get(name)
            if value:
                ids[name] = str(value)
    return ids


def _temporal_ids(record: logging.LogRecord | None) -> dict[str, str]:
    """workflow_id and run_id: from the SDK's logger extras, else from the activity or workflow running here."""
    extra = record.__dict__ if record is not None else {}
    details = extra.get("temporal_activity") or extra.get("temporal_workflow")
    if details:
        return {"workflow_id": details.get("workflow_id"), "run_id": details.get("workflow_run_id") or details.get("run_id")}
    from temporalio import activity, workflow

    if activity.in_activity():
        info = activity.info()
        return {"workflow_id": info.workflow_id, "run_id": info.workflow_run_id}
    if workflow.in_workflow():
        info = workflow.info()
        return {"workflow_id": info.workflow_id, "run_id": info.run_id}
    return {}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the ids of `current_ids`, and a
    traceback as one field."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if record.name == ACCESS_LOGGER and isinstance(record.args, tuple) and len(record.args) == 5:
            # uvicorn's (client address, method, path, HTTP version, status): the address is personal data.
            _address, method, path, _version, status = record.args
            line.update(message=f"{method} {path} {status}", method=method, path=path, status=status)
        else:
            line["message"] = record.getMessage()
        line.update(current_ids(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")


def quiet_temporal_message_suffix() -> None:
    """In JSON the SDK's ids are fields: no need for its dict appended to each message as well."""
    from temporalio import activity, workflow

    activity.logger.activity_info_on_message = False
    workflow.logger.workflow_info_on_message = False


def temporal_core_logging(log_format: str):
    """The SDK core's own lines (its Rust part writes them itself by default): in JSON they go through
    Python logging, so they too are one JSON object a line, masked like every other."""
    from temporalio.runtime import LogForwardingConfig, LoggingConfig, TelemetryFilter

    if log_format != "json":
        return LoggingConfig.default
    return LoggingConfig(filter=TelemetryFilter(core_level="WARN", other_level="ERROR"), forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")))


def configure_worker_logging(log_format: str) -> None:
    """The worker's (and other plain processes') logging: safe, one line per event, text or JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(SafeLogFilter())
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    if log_format == "json":
        quiet_temporal_message_suffix()


def api_log_config(log_format: str) -> dict:
    """uvicorn's config for `takeback api` (api.logsafe.log_config), JSON formatted when asked."""
    from api.logsafe import log_config

    config = log_config()
    if log_format == "json":
        from temporalio.runtime import Runtime, TelemetryConfig

        config["formatters"] = {name: {"()": "observability.logs.JsonFormatter"} for name in config["formatters"]}
        quiet_temporal_message_suffix()
        # Before the API's client connects: the default runtime is the one it uses.
        Runtime.set_default(Runtime(telemetry=TelemetryConfig(logging=temporal_core_logging(log_format))), error_if_already_set=False)
    return config
