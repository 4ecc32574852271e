"""`synapse-guard member ...`: a member's account, by a server admin, in one command.

    synapse-guard member add @alice:example.org --url URL --token-file FILE --sheet alice.pdf
    synapse-guard member lock @alice:example.org --url URL --token-file FILE
    synapse-guard member unlock @alice --url URL --token-file FILE
    synapse-guard member remove @alice --url URL --token-file FILE --yes

`lock` (a lost or seized phone): every session and pusher of the member logged out at once,
logins refused until `unlock`. `remove`: locked, then the account deactivated and erased
(irreversible: asks for --yes). A user ID without a server (`@alice`) takes the server of
the admin whose token is used. The token file holds a server admin's access token (never on
the command line, where `ps` would show it). Exit status: 0 done, 1 the server refused or
could not be reached (or some sessions could not be logged out: run it again), 2 bad
arguments or token file. Standard library only; this module does not import Synapse.

Each action is one function taking the parsed arguments and returning the exit status, and
one `actions.add_parser` call in `add_arguments`.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from typing import Any

from synapse_guard.cli import member_add, pinning
from synapse_guard.cli.lockdown import ClientError, TokenFileError, call, read_token

RESOURCE_PREFIX = "/_synapse/client/synapse_guard/member"
WHOAMI_PATH = "/_matrix/client/v3/account/whoami"
EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2


class MemberCliError(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `member` subcommand's own subcommands (called by cli.main.build_parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("user", help="the member, e.g. @alice:example.org (or @alice)")
    common.add_argument(
        "--url", required=True, help="the server's client URL, e.g. https://matrix.example.org"
    )
    common.add_argument(
        "--token-file",
        required=True,
        metavar="FILE",
        help="a file holding a server admin's access token (never given on the command line)",
    )
    pinning.add_argument(common)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    member_add.add_arguments(  # `add` and its sheet: cli/member_add.py, cli/onboarding.py
        actions.add_parser(
            "add", help="create an account, enrol its second factor, write its onboarding sheet"
        )
    )
    actions.add_parser(
        "lock",
        parents=[common],
        help="lost phone: log out every session and pusher now, refuse logins until unlock",
    ).set_defaults(handler=lock)
    actions.add_parser(
        "unlock", parents=[common], help="let a locked member log in again"
    ).set_defaults(handler=unlock)
    remove_parser = actions.add_parser(
        "remove",
        parents=[common],
        help="lock, then deactivate the account and erase what Synapse allows (irreversible)",
    )
    remove_parser.add_argument(
        "--yes", action="store_true", help="confirm: the account cannot be brought back"
    )
    remove_parser.set_defaults(handler=remove)


def _say(message: str) -> None:
    print(f"synapse-guard: {message}", file=sys.stderr)


def _token(args: argparse.Namespace) -> str:
    url = urllib.parse.urlsplit(args.url)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise MemberCliError(f"--url: {args.url!r} is not an http(s) URL", EXIT_USAGE)
    try:
        return read_token(args.token_file)
    except TokenFileError as e:
        raise MemberCliError(f"--token-file: {e}", EXIT_USAGE) from None


def _user_id(args: argparse.Namespace, token: str) -> str:
    """The full user ID; `@alice` takes the server of the admin the token belongs to."""
    user = str(args.user).strip()
    if not user.startswith("@") or len(user) < 2:
        raise MemberCliError(f"{user!r} is not a user ID such as @alice:example.org", EXIT_USAGE)
    if ":" in user:
        return user
    admin = str(call(args.url, WHOAMI_PATH, token, tls_pin=args.tls_pin).get("user_id", ""))
    if ":" not in admin:
        raise MemberCliError("the server did not say whose token this is", EXIT_REFUSED)
    return f"{user}:{admin.split(':', 1)[1]}"


def _act(args: argparse.Namespace, action: str) -> dict[str, Any] | int:
    """POST the action for the member; the answer, or the exit status of a failure."""
    try:
        token = _token(args)
        user_id = _user_id(args, token)
        path = f"{RESOURCE_PREFIX}/{action}"
        return call(args.url, path, token, {"user_id": user_id}, tls_pin=args.tls_pin)
    except MemberCliError as e:
        _say(f"error: {e}")
        return e.status
    except ClientError as e:
        _say(f"error: {e}")
        return EXIT_REFUSED


def _logged_out(reply: dict[str, Any]) -> int:
    print(
        f"logged out {reply.get('revoked_sessions', 0)} sessions, "
        f"removed {reply.get('removed_pushers', 0)} pushers"
    )
    if reply.get("failed"):
        _say(
            f"warning: {reply['failed']} sessions or pushers could not be removed (the lock "
            "refuses them meanwhile); run the command again"
        )
        return EXIT_REFUSED
    return EXIT_OK


def lock(args: argparse.Namespace) -> int:
    reply = _act(args, "lock")
    if isinstance(reply, int):
        return reply
    already = "" if reply.get("changed", True) else " (was locked already)"
    print(f"{reply['user_id']}: locked{already}; logins refused until `member unlock`")
    return _logged_out(reply)


def unlock(args: argparse.Namespace) -> int:
    reply = _act(args, "unlock")
    if isinstance(reply, int):
        return reply
    done = "unlocked" if reply.get("changed") else "was not locked; nothing changed"
    print(f"{reply['user_id']}: {done}")
    return EXIT_OK


def remove(args: argparse.Namespace) -> int:
    if not args.yes:
        _say("error: `member remove` deactivates and erases the account for good: add --yes")
        return EXIT_USAGE
    reply = _act(args, "remove")
    if isinstance(reply, int):
        return reply
    print(f"{reply['user_id']}: deactivated and erased; logins refused")
    return _logged_out(reply)
