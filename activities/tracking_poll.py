"""The tracking poll's activity: the provider's news of every open tracker, recorded as a webhook's.

Run by the Temporal Schedule of workflows/tracking_poll.py, so a lost or refused webhook (an outage
of ours, a stale signature) costs at most one interval. Events go through the same path as the
webhook's (service.deals.send_carrier_event: once per event, never backwards, failures and returns
escalated to the deal), and pickups a cancelled deal could not cancel with the provider then are
cancelled here.
"""

import asyncio
import logging

from pydantic import BaseModel
from temporalio import activity

from settings import Settings
from store import carrier_pickups as journal
from store.db import session_scope

log = logging.getLogger("takeback.carrier.poll")


class PollSummary(BaseModel):
    trackers: int = 0  # open trackers asked about
    events: int = 0  # events they reported
    applied: int = 0  # events that moved a pickup (news the webhooks had not brought)
    cancelled: int = 0  # pickups cancelled with the provider that a deal's close could not cancel
    errors: list[str] = []


class TrackingPollActivities:
    def __init__(self, settings: Settings):
        self.settings = settings

    def all(self) -> list:
        return [self.poll_open_trackers]

    def _rows(self, query):
        with session_scope(self.settings.effective_database_url) as session:
            return query(session)

    @activity.defn
    async def poll_open_trackers(self) -> PollSummary:
        summary = PollSummary()
        if self.settings.carrier != "easypost":
            return summary
        from activities.easypost_carrier import EasyPostCarrier
        from service import deals as service

        carrier = EasyPostCarrier(self.settings)
        for row in await asyncio.to_thread(self._rows, journal.awaiting_cancel):
            activity.heartbeat()
            if await asyncio.to_thread(carrier.cancel, row.pickup_id):
                summary.cancelled += 1
        client = activity.client()
        for row in await asyncio.to_thread(self._rows, journal.open_trackers):
            activity.heartbeat()
            summary.trackers += 1
            events, problems = await asyncio.to_thread(carrier.poll_trackers, [row])
            summary.errors += problems
            for event in events:
                summary.events += 1
                try:
                    outcome = await service.send_carrier_event(client, self.settings, event)
                except service.UnknownTracking:
                    continue
                summary.applied += outcome.applied and not outcome.repeated
        if summary.errors:
            log.warning("tracking poll: %s tracker(s) could not be read: %s", len(summary.errors), "; ".join(summary.errors[:5]))
        return summary
