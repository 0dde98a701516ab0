"""Reason codes: cancellations, extensions and refused receipt lines give a code from these lists
(with free text beside), so that they can be counted (GET /v1/reports/reasons)."""

from enum import StrEnum


class CancellationReason(StrEnum):
    customer_withdrew = "customer_withdrew"  # the customer no longer returns the gear
    opportunity_lost = "opportunity_lost"  # the refresh or migration did not happen
    booked_in_error = "booked_in_error"  # wrong partner, customer, products or values
    duplicate_deal = "duplicate_deal"  # the same opportunity booked twice
    suspected_fraud = "suspected_fraud"  # grey market, misrepresented gear
    partner_request = "partner_request"
    other = "other"


class ExtensionReason(StrEnum):
    carrier_delay = "carrier_delay"
    customer_not_ready = "customer_not_ready"  # the new gear not yet in service
    site_access = "site_access"  # the site could not be reached or entered
    partial_return = "partial_return"  # more units are coming in a later pickup
    goodwill = "goodwill"  # a programme decision for this partner or customer
    other = "other"


class RejectionReason(StrEnum):
    duplicate_in_receipt = "duplicate_in_receipt"
    already_returned = "already_returned"
    not_listed = "not_listed"  # the deal listed serials and this is not one of them
    other = "other"


REJECTION_TEXT = {
    RejectionReason.duplicate_in_receipt: "serial appears twice in this receipt",
    RejectionReason.already_returned: "serial already returned",
    RejectionReason.not_listed: "serial not listed on this deal",
}
REJECTION_CODE = {text: code for code, text in REJECTION_TEXT.items()}


def rejection_code(reason: str) -> RejectionReason:
    """The code of a stored rejection reason (rows written before codes were kept hold the text only)."""
    return REJECTION_CODE.get(reason, RejectionReason.other)
