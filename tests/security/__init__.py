"""Issue 11 (OWASP API Top 10): one test module per point, each failing on the code before its fix."""
