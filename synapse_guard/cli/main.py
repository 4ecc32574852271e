"""The `synapse-guard` command: operator tools that read Synapse's own configuration.

    synapse-guard render nginx -c homeserver.yaml -c homeserver.d/ [--no-geoip2] [-o FILE]
    synapse-guard check-config -c homeserver.yaml -c homeserver.d/
    synapse-guard lockdown on|off|status --url URL --token-file FILE [--revoke-sessions]
    synapse-guard checkin --url URL --token-file FILE
    synapse-guard totp enroll|reset|set-password --url URL --token-file FILE --user @u:server
    synapse-guard member lock|unlock|remove @u:server --url URL --token-file FILE

`-c` takes Synapse's config paths, as many as Synapse is given, in the same order.

Exit status: 0 on success, 1 when the output cannot be written (render) or the configuration
has problems (check-config), 2 when the command line or the configuration is wrong or
unreadable (the message names the file and the key). Each subcommand is one function taking
the parsed arguments and returning the exit status; a new one is one more `add_parser` call in
`build_parser`.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from synapse_guard import __version__
from synapse_guard.cli import member as member_cli
from synapse_guard.cli import pinning
from synapse_guard.cli import totp as totp_cli
from synapse_guard.cli.lockdown import (
    CHECKIN_PATH,
    LOCKDOWN_PATH,
    ClientError,
    TokenFileError,
    call,
    describe,
    read_token,
)
from synapse_guard.cli.nginx import NginxRenderError, render_nginx
from synapse_guard.config import GuardConfigError
from synapse_guard.record.audit import Pseudonymizer, load_key
from synapse_guard.retention_check import check_retention, format_duration
from synapse_guard.synapse_config import (
    GuardEntry,
    SynapseConfig,
    SynapseConfigError,
    guard_entry,
    read_config,
)

PROG = "synapse-guard"
EXIT_OK = 0
EXIT_OUTPUT = 1
EXIT_PROBLEMS = 1  # check-config found settings to change
EXIT_USAGE = 2  # also argparse's status for a bad command line

Command = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """Bad configuration or arguments: exit status 2, the message on stderr."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Tools for servers protected by the synapse-guard module."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    synapse_config = argparse.ArgumentParser(add_help=False)
    synapse_config.add_argument(
        "-c",
        "--config-path",
        dest="config_paths",
        action="append",
        required=True,
        metavar="PATH",
        help="a Synapse config file or directory (of *.yaml files), as given to Synapse; "
        "repeat it in Synapse's order",
    )
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write to FILE (replaced atomically) instead of standard output",
    )

    render = commands.add_parser(
        "render", help="render deployment files from the guard's configuration"
    )
    targets = render.add_subparsers(dest="target", metavar="TARGET", required=True)
    nginx = targets.add_parser(
        "nginx",
        parents=[synapse_config, output],
        help="an nginx include refusing, before Synapse, the addresses the guard refuses",
        description="Render an include for nginx's http {} context that sets "
        "$synapse_guard_refused to 1 for the addresses network: refuses; use it with "
        "`if ($synapse_guard_refused) { return 403; }`.",
    )
    nginx.add_argument(
        "--no-geoip2",
        dest="geoip2",
        action="store_false",
        help="for an nginx without ngx_http_geoip2_module: network.allow_countries is then "
        "left to Synapse, and only deny_cidrs are refused at the edge",
    )
    nginx.set_defaults(handler=_render_nginx)

    check = commands.add_parser(
        "check-config",
        parents=[synapse_config],
        help="check that Synapse's own settings purge data within the guard's retention",
        description="Check Synapse's configuration against the guard's retention.max_lifetime: "
        "Synapse's retention must be on, its limits and purge jobs no looser, and media, "
        "redacted events, forgotten rooms and client IPs purged as soon. Prints each problem "
        "as `<setting>: <problem>; set <fix>` and exits 1 if there is any, 0 otherwise.",
    )
    check.set_defaults(handler=_check_config)

    pseudonym = commands.add_parser(
        "pseudonym",
        help="compute or test the audit pseudonym of a user or an address",
        description="For incident response: compute the pseudonym the audit trail uses for a "
        "user ID or an address, with the server's audit key, or test whether it matches one "
        "found in the audit log (exit 0 if it matches, 1 if not).",
    )
    pseudonym.add_argument(
        "--key-file", required=True, help="the file named by audit.pseudonym_key_path"
    )
    subject = pseudonym.add_mutually_exclusive_group(required=True)
    subject.add_argument("--user", help="a full user ID, e.g. @alice:example.org")
    subject.add_argument("--address", help="an IPv4 or IPv6 address")
    pseudonym.add_argument("--match", metavar="PSEUDONYM", help="e.g. u:9a8b7c6d5e4f3a2b")
    pseudonym.set_defaults(handler=_pseudonym)

    server = argparse.ArgumentParser(add_help=False)
    server.add_argument(
        "--url", required=True, help="the server's base URL, e.g. https://chat.example.org"
    )
    server.add_argument(
        "--token-file",
        required=True,
        metavar="FILE",
        help="a file holding the caller's access token (never given on the command line)",
    )
    pinning.add_argument(server)
    lock = commands.add_parser(
        "lockdown",
        parents=[server],
        help="lock the server down, open it, or show its state (server admins)",
        description="Switch the server-wide lockdown through the guard's admin endpoint. While "
        "locked, only lockdown.exempt_users may use the server (and this command). Exit status: "
        "0 done, 1 the server refused or could not be reached, 2 bad arguments or token file.",
    )
    lock.add_argument("action", choices=("on", "off", "status"))
    lock.add_argument(
        "--revoke-sessions",
        action="store_true",
        help="with `on`: also log out every session of every user who is not exempt",
    )
    lock.set_defaults(handler=_lockdown)
    checkin = commands.add_parser(
        "checkin",
        parents=[server],
        help="check in to the dead man's switch (lockdown.checkin_users)",
        description="Record a check-in, so the dead man's switch does not lock the server. "
        "Exit status: 0 recorded, 1 refused or unreachable, 2 bad arguments or token file.",
    )
    checkin.set_defaults(handler=_checkin)

    totp = commands.add_parser(
        "totp",
        help="enrol a user in the second factor, reset it, or set a password (server admins)",
        description="Admin actions of auth.totp, over the guard's endpoints on the server "
        "(/_synapse/client/synapse_guard/totp/...), with a server admin's access token read "
        "from a file. Exit 0 on success, 1 if the server refused or cannot be reached.",
    )
    totp_cli.add_arguments(totp)

    member = commands.add_parser(
        "member",
        help="lock a member (lost phone), unlock, or remove them (server admins)",
        description="A member's account over the guard's endpoints on the server "
        "(/_synapse/client/synapse_guard/member/...), with a server admin's access token read "
        "from a file. Exit 0 on success, 1 if the server refused or cannot be reached.",
    )
    member_cli.add_arguments(member)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    handler: Command = args.handler
    try:
        if problem := pinning.check_url(getattr(args, "url", ""), getattr(args, "tls_pin", None)):
            raise UsageError(problem)
        return handler(args)
    except UsageError as e:
        _say(f"error: {e}")
        return EXIT_USAGE


def _render_nginx(args: argparse.Namespace) -> int:
    entry = _load(args.config_paths)
    policy = entry.config.network
    if policy.allow_countries and not args.geoip2:
        _say(
            "warning: network.allow_countries cannot be enforced without the geoip2 module: "
            "addresses outside deny_cidrs are passed to Synapse, which decides"
        )
    try:
        text = render_nginx(
            policy, geoip2=args.geoip2, sources=[os.path.abspath(f) for f in entry.files]
        )
    except NginxRenderError as e:
        raise UsageError(f"{entry.modules_file}: modules[{entry.index}].config.{e}") from None
    return _emit(text, args.output)


def _check_config(args: argparse.Namespace) -> int:
    config, entry = _read(args.config_paths)
    problems = check_retention(config.values, entry.config)
    for problem in problems:
        print(problem)
    max_lifetime = format_duration(entry.config.retention.max_lifetime_ms)
    if problems:
        count = f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")
        _say(
            f"{count}: Synapse would keep data longer than retention.max_lifetime ({max_lifetime})"
        )
        return EXIT_PROBLEMS
    print(
        f"OK: Synapse purges messages, media, redactions, forgotten rooms and client IPs "
        f"within retention.max_lifetime ({max_lifetime}); {len(config.files)} files read"
    )
    return EXIT_OK


def _load(paths: Sequence[str]) -> GuardEntry:
    return _read(paths)[1]


def _read(paths: Sequence[str]) -> tuple[SynapseConfig, GuardEntry]:
    """Synapse's merged configuration and the guard's entry in it; warnings on stderr."""
    try:
        config = read_config(paths)
        entry = guard_entry(config)
    except SynapseConfigError as e:
        raise UsageError(str(e)) from None
    for warning in entry.warnings:
        _say(f"warning: {warning}")
    return config, entry


def _emit(text: str, output: str | None) -> int:
    if output is None or output == "-":
        sys.stdout.write(text)
        return EXIT_OK
    try:
        _write_atomically(Path(output), text)
    except OSError as e:
        _say(f"error: cannot write {output}: {e.strerror or e}")
        return EXIT_OUTPUT
    _say(f"wrote {output}")
    return EXIT_OK


def _write_atomically(path: Path, text: str) -> None:
    """Write a sibling temporary file and rename it over `path`: nginx never reads half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(tmp, 0o644)  # world-readable config, like the files nginx ships
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _pseudonym(args: argparse.Namespace) -> int:
    try:
        pseudonymizer = Pseudonymizer(load_key(args.key_file))
    except GuardConfigError as e:
        raise UsageError(f"--key-file: {e.message}") from None
    if args.user is not None:
        computed = pseudonymizer.user(args.user)
    else:
        computed = pseudonymizer.address(args.address)
    if args.match is None:
        print(computed)
        return EXIT_OK
    matches = hmac.compare_digest(computed, args.match.strip())
    print("match" if matches else "no match")
    return EXIT_OK if matches else EXIT_PROBLEMS


def _token(path: str) -> str:
    try:
        return read_token(path)
    except TokenFileError as e:
        raise UsageError(f"--token-file: {e}") from None


def _lockdown(args: argparse.Namespace) -> int:
    if args.revoke_sessions and args.action != "on":
        raise UsageError("--revoke-sessions goes only with `on`")
    token = _token(args.token_file)
    body = None
    if args.action != "status":
        body = {"locked": args.action == "on"}
        if args.revoke_sessions:
            body["revoke_sessions"] = True
    try:
        status = call(args.url, LOCKDOWN_PATH, token, body, tls_pin=args.tls_pin)
    except ClientError as e:
        _say(f"error: {e}")
        return EXIT_PROBLEMS
    print(describe(status))
    if status.get("revoked_sessions"):
        print(f"logged out {status['revoked_sessions']} sessions")
    return EXIT_OK


def _checkin(args: argparse.Namespace) -> int:
    token = _token(args.token_file)
    try:
        status = call(args.url, CHECKIN_PATH, token, {}, tls_pin=args.tls_pin)
    except ClientError as e:
        _say(f"error: {e}")
        return EXIT_PROBLEMS
    print("checked in; " + describe(status))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
