"""The SQL store: items, ledger, e-mail log, API keys and the deals read model."""
