"""Carrier adapter. The simulated carrier books instantly with a deterministic tracking number;
TAKEBACK_CARRIER=easypost books through EasyPost (activities/easypost_carrier.py)."""

import hashlib
import threading

from pydantic import BaseModel


class CarrierBooking(BaseModel):
    carrier: str
    tracking_number: str


class SimulatedCarrier:
    name = "SimCarrier"

    def book(self, pickup_id: str, deal_id: str = "", request=None) -> CarrierBooking:
        # Deterministic per pickup, so a retried booking gets the same tracking number.
        digest = hashlib.sha256(pickup_id.encode()).hexdigest()[:14].upper()
        return CarrierBooking(carrier=self.name, tracking_number=f"SIM{digest}")

    def cancel_open_pickups(self, deal_id: str, heartbeat=lambda: None) -> list[str]:
        return []  # nothing was booked anywhere


class DeferredCarrier:
    """A carrier made at its first use. The EasyPost carrier's module imports `easypost` (~50 ms), no
    part of a worker's start, which must poll again within a second of a restart
    (tests/test_worker_imports.py); the first pickup booked or cancelled pays it instead."""

    def __init__(self, make):
        self._make, self._carrier, self._lock = make, None, threading.Lock()

    def __getattr__(self, name: str):
        if self._carrier is None:
            with self._lock:  # activities run on threads: one carrier for all of them
                if self._carrier is None:
                    self._carrier = self._make()
        return getattr(self._carrier, name)


def carrier_from_settings(settings):
    """The carrier TAKEBACK_CARRIER names: `sim` (the default) or `easypost` (made at its first use)."""
    if settings.carrier == "easypost":

        def easypost_carrier():
            from activities.easypost_carrier import EasyPostCarrier

            return EasyPostCarrier(settings)

        return DeferredCarrier(easypost_carrier)
    return SimulatedCarrier()
