"""Fixtures that start real servers, shared by tests/integration and tests/deploy.

Under CI=true a missing server fails instead of skipping.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.harness import (
    PostgresCluster,
    ServerMissing,
    SynapseServer,
    generate_base_config,
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(reason: str) -> None:
    """Skip with the reason, except in CI where a missing server is a failure."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: missing servers fail instead of skipping)")
    pytest.skip(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath) or "tests/deploy" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def base_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_base_config(tmp_path_factory.mktemp("base"))


def running_postgres() -> Iterator[PostgresCluster]:
    try:
        cluster = PostgresCluster()
    except ServerMissing as e:
        require(str(e))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """One PostgreSQL server for the whole run (each test creates its own database)."""
    yield from running_postgres()


@pytest.fixture
def own_postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL server of this test's own, which it may stop and start (faults)."""
    yield from running_postgres()


SynapseFactory = Callable[..., SynapseServer]


@pytest.fixture(scope="module")
def synapse_factory(
    tmp_path_factory: pytest.TempPathFactory, base_config: Path
) -> Iterator[SynapseFactory]:
    """Build (not start) Synapse servers; every one started is stopped at module end."""
    servers: list[SynapseServer] = []

    def make(**kwargs: object) -> SynapseServer:
        server = SynapseServer(tmp_path_factory.mktemp("synapse"), base_config, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def synapse(synapse_factory: SynapseFactory) -> SynapseServer:
    """A guarded Synapse on SQLite with exactly homeserver.d's configuration."""
    return synapse_factory().start()
