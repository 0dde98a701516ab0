"""Pure models and rules of takeback deals: no I/O, safe to import from workflows."""
