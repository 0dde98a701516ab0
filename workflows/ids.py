"""Workflow ids derived from business ids, so callers find a workflow without a lookup."""


def deal_workflow_id(deal_id: str) -> str:
    return f"deal-{deal_id}"


def pickup_workflow_id(tracking_number: str) -> str:
    return f"pickup-{tracking_number}"


def partner_workflow_id(partner_id: str) -> str:
    return f"partner-{partner_id}"
