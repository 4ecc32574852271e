"""The guard on Synapse with a real PostgreSQL server (started by the fixtures)."""

from __future__ import annotations

import pytest

from tests.integration.conftest import SynapseFactory
from tests.integration.harness import PostgresCluster, SynapseServer
from tests.integration.test_rooms import assert_compliant


@pytest.fixture(scope="module")
def pg_synapse(synapse_factory: SynapseFactory, postgres: PostgresCluster) -> SynapseServer:
    return synapse_factory(database=postgres.create_database()).start()


def test_synapse_really_runs_on_postgres(
    pg_synapse: SynapseServer, postgres: PostgresCluster
) -> None:
    user_id, _ = pg_synapse.new_user("pg")
    database = pg_synapse.database["args"]["database"]  # type: ignore[index]
    rows = postgres.psql(database, f"SELECT count(*) FROM users WHERE name = '{user_id}'")
    assert rows.strip() == "1"


def test_guarded_rooms_on_postgres(pg_synapse: SynapseServer) -> None:
    friend_id, friend = pg_synapse.new_user("pgfriend")
    _, member = pg_synapse.new_user("pgmember")
    room_id = member.room_id(preset="public_chat", visibility="public", invite=[friend_id])
    assert_compliant(member, room_id)

    before = pg_synapse.decisions("event", "deny", "join_rule")
    assert member.put_state(room_id, "m.room.join_rules", {"join_rule": "public"})[0] == 403
    assert pg_synapse.decisions("event", "deny", "join_rule") == before + 1

    assert friend.join(room_id)[0] == 200
    assert friend.send_megolm(room_id)[0] == 200


def test_client_registration_refused_on_postgres(pg_synapse: SynapseServer) -> None:
    status, _ = pg_synapse.client().request(
        "POST", "/_matrix/client/v3/register", {"username": "eve", "password": "x"}, auth=False
    )
    assert status == 403
