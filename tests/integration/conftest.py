"""The shared fixtures live in tests/conftest.py; these names are re-exported for imports."""

from tests.conftest import IN_CI, SynapseFactory, require

__all__ = ["IN_CI", "SynapseFactory", "require"]
