"""Mail a workflow sends beside its process: retried for as long as the provider needs, and never
failing or holding up a decision. Delivery state lives in the store, for ops."""

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

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
    """Mail on its way; a run ends (or continues as new) only once `pending` is 0."""

    def __init__(self, owner: str, task_queue: str | None = None) -> None:
        self.owner = owner
        self.task_queue = task_queue  # None: the workflow's own (deals started before the mail queue)
        self.pending = 0

    def send(self, activity, argument, what: str = "a notice") -> None:
        self.pending += 1

        async def deliver() -> None:
            try:
                # `what` is also its line in the Web UI ("release notice", "reminder 30d"): workflows/story.py.
                await workflow.execute_activity_method(
                    activity, argument, task_queue=self.task_queue, start_to_close_timeout=MAIL_ATTEMPT, retry_policy=MAIL_RETRY, summary=what
                )
            except ActivityError as error:
                workflow.logger.warning("%s: %s could not be sent: %s", self.owner, what, error.cause or error)
            finally:
                self.pending -= 1

        asyncio.ensure_future(deliver())
