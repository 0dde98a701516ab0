"""The HTTP API v1 (contract: shared/api.md): starts workflows and messages them; holds no process state."""
