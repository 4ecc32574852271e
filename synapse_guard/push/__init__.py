"""Push only to the gateways the operator chose (`push:`, docs/push.md).

- `gateways`: pure logic (the strict gateway URL, which pushers are allowed, the `pushers`
  table rows the sweep judges), testable without Synapse;
- `control`: the Synapse side, the refusal of a pusher before Synapse stores it and the sweep
  that removes any that got into the table another way.

Runs inside Synapse. May import the controls at the package's front and `record/`; never `cli/`.
`gateways` imports only `verdict` (config.py reads gateway URLs with it).
"""
