"""The `synapse-guard` command: everything that runs only on the operator's command line.

- `main`: the parser and the subcommands (render nginx, check-config, pseudonym, lockdown, checkin);
- `nginx`: renders the guard's network policy as an nginx include;
- `totp`: the `totp enroll|reset|set-password` subcommands;
- `lockdown`: the HTTP client of the lockdown and check-in endpoints.

Never loaded by Synapse. May import anything in the package; nothing outside `cli/` imports it.
"""
