"""The lockdown and the dead man's switch (docs/lockdown.md).

- `control`: the Synapse side, the per-request refusal, the login refusal, the endpoints and
  the dead man's timer;
- `state`: pure logic (the state, its cache, parsing requests, who is refused);
- `store`: the guard's own table holding the state, shared by every worker.

Runs inside Synapse. May import the controls at the package's front and `record/`; never `cli/`.
"""
