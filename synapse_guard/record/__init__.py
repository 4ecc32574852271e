"""What the guard tells the operator: it records decisions and never makes one.

- `metrics`: the Prometheus metrics, created once at import;
- `audit`: the pseudonymised audit trail (keyed HMAC pseudonyms);
- `reporting`: the one wrapper that counts, logs and audits each verdict, and turns an
  unexpected error into a refusal;
- `logfilter`: the logging filter that redacts identifiers (named in deploy/synapse/log.yaml).

Runs inside Synapse (the log filter in Synapse's logging). May import `verdict`, `network`,
`keyfile` and the package version; never `cli/`, nor a control's Synapse side.
"""
