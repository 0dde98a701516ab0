"""Activities: the only code that does I/O on behalf of the workflows."""
