"""A member's account, by the admin: lock (a lost or seized phone), unlock, remove.

- `control`: the Synapse side: the admin-only endpoints, the refusal of a locked member's
  logins and requests, logging out their sessions and pushers, deactivation;
- `state`: pure logic (request bodies, the cache of locked members);
- `store`: the guard's own table of locked members, shared by every worker.

Runs inside Synapse. May import the controls at the package's front, `lockdown/` (whose
endpoint rules it shares) and `record/`; never `cli/`.
"""
