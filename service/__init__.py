"""What callers (the API, the CLI demo, tests) do to deals: stage in the store, then message the workflow."""
