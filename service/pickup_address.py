"""A pickup's address, checked with the shipping provider before the deal is asked to book it
(TAKEBACK_CARRIER=easypost): an address the carrier cannot deliver to is the partner's 422, never a
booking that fails inside the deal. With the simulated carrier there is nothing to check."""

import asyncio
import logging

from api.problems import Problem
from domain.models import PickupRequest
from settings import Settings

log = logging.getLogger("takeback.service")
RETRY_AFTER = {"Retry-After": "30"}


def provider_words(text: str | None, *, ops: bool, otherwise: str) -> str | None:
    """What a caller reads of the shipping provider's error `text`: ops its own words; a partner `otherwise`,
    never them (they may name the vendor's EasyPost account: a payment due, a key refused)."""
    return text if text is None or ops else otherwise


class AddressUnverified(Problem):
    def __init__(self, detail: str, errors: list[dict]):
        Problem.__init__(self, 422, detail, "address-unverified", errors=errors)


class CarrierUnavailable(Problem):
    def __init__(self, detail: str):
        Problem.__init__(self, 503, f"the carrier cannot check the address now ({detail}); nothing was booked: retry shortly", "carrier-unavailable", headers=dict(RETRY_AFTER))


async def check_pickup_address(settings: Settings, deal_id: str, request: PickupRequest, *, ops: bool = False) -> None:
    """AddressUnverified (422) or CarrierUnavailable (503); the provider's own words in the 503 for ops
    only (`ops`), and in the log."""
    if settings.carrier != "easypost":
        return
    from activities.easypost_carrier import AddressRefused, EasyPostCarrier, ProviderUnavailable

    try:
        await asyncio.to_thread(EasyPostCarrier(settings).verify_address, deal_id, request)
    except AddressRefused as error:
        raise AddressUnverified(str(error), error.errors) from None
    except ProviderUnavailable as error:
        log.warning("deal %s: the carrier could not check a pickup's address: %s", deal_id, error)
        raise CarrierUnavailable(provider_words(str(error), ops=ops, otherwise="ops can see why")) from None
