"""Carrier adapter. The simulated carrier books instantly with a deterministic tracking number."""

import hashlib

from pydantic import BaseModel


class CarrierBooking(BaseModel):
    carrier: str
    tracking_number: str


class SimulatedCarrier:
    name = "SimCarrier"

    def book(self, pickup_id: str) -> CarrierBooking:
        # Deterministic per pickup, so a retried booking gets the same tracking number.
        digest = hashlib.sha256(pickup_id.encode()).hexdigest()[:14].upper()
        return CarrierBooking(carrier=self.name, tracking_number=f"SIM{digest}")
