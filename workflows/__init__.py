"""Durable workflows: one per deal, one per pickup (child), deterministic and I/O-free."""
