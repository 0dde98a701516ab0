"""docker-compose.yml as the security tests read it: services, environments, published ports."""

from tests.test_compose import COMPOSE, ROOT, SERVICES, env_of, port_mappings, resolve  # noqa: F401

README = (ROOT / "README.md").read_text()


def security_section() -> str:
    """README's `## Security` section (up to the next `## ` heading)."""
    assert "\n## Security" in README, "README has no Security section"
    section = README.split("\n## Security", 1)[1]
    return section.split("\n## ", 1)[0]
