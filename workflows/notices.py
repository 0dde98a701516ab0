"""Mail a workflow sends beside its process: retried for as long as the provider needs, and never
failing or holding up a decision or a continue-as-new. Delivery state lives in the store, for ops."""

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from domain.deal_progress import PendingNotice

# One attempt: well above the provider's own deadline (10 s a socket operation), well below the claim
# an attempt holds on its message (store.mail.CLAIM_LEASE), so a retry never doubles a mail.
MAIL_ATTEMPT = timedelta(minutes=1)
# Retried for as long as it takes (an outage, a revoked key), at most every 10 minutes.
MAIL_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_interval=timedelta(minutes=10))


def mail_task_queue(task_queue: str) -> str:
    """The queue a deal's mail waits on, beside its own: the worker serves it at the provider's pace
    (TAKEBACK_MAIL_RATE, a server-side limit on the whole queue), so a pile of mail neither draws 429s
    nor queues ahead of the store writes a decision waits for."""
    return f"{task_queue}-mail"


class Notices:
    """Mail on its way, kept in `in_flight` (a list the workflow carries across continue-as-new): a run
    may continue as new with mail still undelivered, and the next run sends it again (`resume`). A mail
    is claimed under its key in the store before the provider is called (activities), so the two sends
    are one mail."""

    def __init__(self, owner: str, in_flight: list[PendingNotice], task_queue: str | None = None) -> None:
        self.owner = owner
        self.task_queue = task_queue  # None: the workflow's own queue
        self.in_flight = in_flight

    @property
    def pending(self) -> int:
        return len(self.in_flight)

    def send(self, activity, argument, what: str = "a notice") -> None:
        """`what`: its line in the Web UI ("release notice", "reminder 30d"): workflows/story.py."""
        note = PendingNotice(key=what, activity=activity.__name__, argument=argument.model_dump(mode="json"), summary=what)
        self.in_flight.append(note)
        self._deliver(note)

    def resume(self) -> None:
        """Send again what an earlier run had on its way when it continued as new."""
        for note in list(self.in_flight):
            self._deliver(note)

    def _deliver(self, note: PendingNotice) -> None:
        async def deliver() -> None:
            try:
                await workflow.execute_activity(
                    note.activity, note.argument, task_queue=self.task_queue, start_to_close_timeout=MAIL_ATTEMPT, retry_policy=MAIL_RETRY, summary=note.summary
                )
            except ActivityError as error:
                workflow.logger.warning("%s: %s could not be sent: %s", self.owner, note.summary, error.cause or error)
            finally:
                self.in_flight.remove(note)

        asyncio.ensure_future(deliver())
