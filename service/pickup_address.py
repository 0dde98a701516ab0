"""A pickup's address, checked with the shipping provider before the deal is asked to book it
(TAKEBACK_CARRIER=easypost): an address the carrier cannot deliver to is the partner's 422, never a
booking that fails inside the deal. With the simulated carrier there is nothing to check."""

import asyncio

from api.problems import Problem
from domain.models import PickupRequest
from settings import Settings

RETRY_AFTER = {"Retry-After": "30"}


class AddressUnverified(Problem):
    def __init__(self, detail: str, errors: list[dict]):
        Problem.__init__(self, 422, detail, "address-unverified", errors=errors)


class CarrierUnavailable(Problem):
    def __init__(self, detail: str):
        Problem.__init__(self, 503, f"the carrier cannot check the address now ({detail}); nothing was booked: retry shortly", "carrier-unavailable", headers=dict(RETRY_AFTER))


async def check_pickup_address(settings: Settings, deal_id: str, request: PickupRequest) -> None:
    if settings.carrier != "easypost":
        return
    from activities.easypost_carrier import AddressRefused, EasyPostCarrier, ProviderUnavailable

    try:
        await asyncio.to_thread(EasyPostCarrier(settings).verify_address, deal_id, request)
    except AddressRefused as error:
        raise AddressUnverified(str(error), error.errors) from None
    except ProviderUnavailable as error:
        raise CarrierUnavailable(str(error)) from None
