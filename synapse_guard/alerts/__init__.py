"""Alertmanager's alerts, posted as notices into the admins' room (`alerts:`, docs in README).

- `webhook`: pure logic (Alertmanager's webhook body, the notice text that keeps only alert
  names, severities, statuses and counts, the rate limit, the caller checks), testable
  without Synapse;
- `control`: the Synapse side, the endpoint Alertmanager posts to and the notice it sends.

Runs inside Synapse. May import the controls at the package's front and `record/`; never `cli/`.
`webhook` imports only `request_body`.
"""
