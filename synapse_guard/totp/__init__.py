"""The second factor (`auth.totp`): password + 6-digit code typed into the password field.

- `provider`: the Synapse side, a password auth provider, its admin endpoints and start-up checks;
- `core`: pure logic (codes, sealing secrets, the failure limit), testable without Synapse;
- `store`: the guard's own table of sealed secrets, used codes and failures.

Runs inside Synapse. May import the controls at the package's front and `record/`; never `cli/`.
"""
