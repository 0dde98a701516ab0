"""The search attributes ops filter workflows by in the Temporal Web UI and CLI (README "Operating it").

Both are Keyword attributes the namespace must have registered (`takeback dev` and the test suite
start their dev servers with them; elsewhere `temporal operator search-attribute create`). With
TAKEBACK_SEARCH_ATTRIBUTES=true the API starts deals and partners with them, and a deal started with
them keeps DealStatus current (workflows/deal.py): without the setting nothing uses them, and a
server without them registered serves as before.
"""

from temporalio.common import SearchAttributeKey

DEAL_STATUS = SearchAttributeKey.for_keyword("DealStatus")
PARTNER_ID = SearchAttributeKey.for_keyword("PartnerId")
REGISTERED = (DEAL_STATUS, PARTNER_ID)


def dev_server_args() -> list[str]:
    """`temporal server start-dev` arguments that register them."""
    return [argument for key in REGISTERED for argument in ("--search-attribute", f"{key.name}=Keyword")]
