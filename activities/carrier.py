"""Carrier adapter. The simulated carrier books instantly with a deterministic tracking number;
TAKEBACK_CARRIER=easypost books through EasyPost (activities/easypost_carrier.py)."""

import hashlib

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


def carrier_from_settings(settings):
    """The carrier TAKEBACK_CARRIER names: `sim` (the default) or `easypost`."""
    if settings.carrier == "easypost":
        from activities.easypost_carrier import EasyPostCarrier

        return EasyPostCarrier(settings)
    return SimulatedCarrier()
