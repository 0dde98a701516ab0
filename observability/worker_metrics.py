"""The project's counters in the worker, recorded through the SDK's metric meter.

The worker's Prometheus endpoint belongs to the SDK's runtime (TAKEBACK_WORKER_METRICS_ADDRESS,
worker.py), so these go through its meter (`activity.metric_meter()`) and appear on that same
endpoint beside the SDK's own metrics, with the activity's labels (namespace, task_queue,
activity_type, workflow_type). Exported names end in `_total` (PrometheusConfig
counters_total_suffix). All are counted in activities, never in workflow code, so a replay counts
nothing; an attempt retried after a lost completion may count twice, which a rate does not notice.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

# Mail keys are "<deal>:reminder:<offset>", "<deal>:settlement:<outcome>", "<deal>:<pickup>:escalation:<status>"
# and "<partner>:certified", "<partner>:year-<n>:lapsed", "<partner>:year-<n>:reminder:<offset>" (activities/).
MAIL_KINDS = ("settlement", "escalation", "reminder", "certified", "lapsed", "reinstated")


def mail_kind(key: str) -> str:
    parts = key.split(":")
    for kind in MAIL_KINDS:
        if kind in parts[1:]:
            if kind == "reminder" and any(part.startswith("year-") for part in parts):
                return "specialization_reminder"
            return kind
    return "other"


def error_type(error: BaseException) -> str:
    """The ApplicationError's type (MailTemporarilyUnavailable, DealNotOpen ...), else the class name."""
    if isinstance(error, ApplicationError) and error.type:
        return error.type
    return type(error).__name__


_api_counters: dict = {}


def count(name: str, description: str, attributes: dict[str, str] | None = None, value: int = 1) -> None:
    """Add to a counter: in an activity, of its meter (the worker's endpoint); elsewhere (the API, which
    counts receipts and the decisions they make in the store), of the process's Prometheus registry,
    which the API's /metrics serves. Same name and labels either way."""
    if value <= 0:
        return
    attributes = attributes or {}
    if activity.in_activity():
        activity.metric_meter().create_counter(name, description).add(value, attributes)
        return
    from prometheus_client import Counter  # the API's client library; a worker never gets here

    key = (name, tuple(sorted(attributes)))
    if key not in _api_counters:
        _api_counters[key] = Counter(name, description, list(key[1]))
    counter = _api_counters[key]
    (counter.labels(**attributes) if attributes else counter).inc(value)


def mail_sent(key: str) -> None:
    count("takeback_emails_sent", "E-mails delivered to the provider, by kind", {"kind": mail_kind(key)})


def mail_failed(key: str, error: BaseException) -> None:
    count("takeback_emails_failed", "E-mails given up for good (refused, outcome unknown), by kind", {"kind": mail_kind(key), "error": error_type(error)})


def mail_attempt_failed(key: str, error: BaseException) -> None:
    count("takeback_email_attempts_failed", "Mail attempts that failed and will be retried (an outage, a refused key), by kind", {"kind": mail_kind(key), "error": error_type(error)})


def receipt_processed(accepted: int, rejected: int) -> None:
    count("takeback_receipt_batches_processed", "Receipt batches processed (each once)")
    count("takeback_receipt_items", "Received items, accepted or rejected", {"result": "accepted"}, accepted)
    count("takeback_receipt_items", "Received items, accepted or rejected", {"result": "rejected"}, rejected)


def decided(outcome: str) -> None:
    count("takeback_settlements", "Deals' money decisions, by outcome (released, forfeited, clawed_back, cancelled, applied)", {"outcome": outcome})


class ActivityFailureCounter(Interceptor):
    """Counts each failed activity attempt by its error type (the activity type is a label already)."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _CountFailures(next)


class _CountFailures(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput):
        try:
            return await super().execute_activity(input)
        except BaseException as error:
            count("takeback_activity_failures", "Failed activity attempts, by error type", {"error": error_type(error)})
            raise
