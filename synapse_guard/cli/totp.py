"""`synapse-guard totp ...`: the admin's side of the second factor, over the guard's endpoints.

    synapse-guard totp enroll --url URL --token-file FILE --user @alice:example.org
    synapse-guard totp reset --url URL --token-file FILE --user @alice:example.org
    synapse-guard totp set-password --url URL --token-file FILE --user @alice:example.org

The token file holds a server admin's access token (never on the command line, where `ps`
would show it). `enroll` prints the otpauth:// URI and, if the `qrcode` package is installed,
a QR code to scan; both hold the user's secret, so show them to that user only.
`set-password` reads the new password from the terminal (twice), or one line of standard input.
This module does not import Synapse: it runs on any host that reaches the server.
"""

from __future__ import annotations

import argparse
import getpass
import importlib
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, TextIO

from synapse_guard.cli import pinning

RESOURCE_PREFIX = "/_synapse/client/synapse_guard/totp"
EXIT_OK = 0
EXIT_REFUSED = 1  # the server refused, or could not be reached
EXIT_USAGE = 2


class TotpCliError(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `totp` subcommand's own subcommands (called by cli.build_parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", required=True, help="the server's client URL, e.g. https://matrix.example.org"
    )
    common.add_argument(
        "--token-file", required=True, help="a file holding a server admin's access token"
    )
    common.add_argument("--user", required=True, help="a full user ID, e.g. @alice:example.org")
    pinning.add_argument(common)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser(
        "enroll",
        parents=[common],
        help="give a user a TOTP secret; prints the otpauth:// URI (and a QR code)",
    ).set_defaults(handler=enroll)
    actions.add_parser(
        "reset", parents=[common], help="remove a user's TOTP secret (lost phone)"
    ).set_defaults(handler=reset)
    actions.add_parser(
        "set-password",
        parents=[common],
        help="set a user's password (Synapse's own reset is off with localdb_enabled: false)",
    ).set_defaults(handler=set_password)


def _say(message: str) -> None:
    print(f"synapse-guard: {message}", file=sys.stderr)


def _post(args: argparse.Namespace, action: str, body: dict[str, Any]) -> dict[str, Any]:
    url = urllib.parse.urlsplit(args.url)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise TotpCliError(f"--url: {args.url!r} is not an http(s) URL", EXIT_USAGE)
    try:
        token = Path(args.token_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise TotpCliError(
            f"--token-file: cannot read {args.token_file!r}: {reason}", EXIT_USAGE
        ) from None
    if not token:
        raise TotpCliError(f"--token-file: {args.token_file!r} is empty", EXIT_USAGE)
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        args.url.rstrip("/") + f"{RESOURCE_PREFIX}/{action}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with pinning.urlopen(request, 30, args.tls_pin) as response:
            reply: dict[str, Any] = json.loads(response.read())
            return reply
    except urllib.error.HTTPError as e:
        try:
            error = json.loads(e.read())
            detail = f"{error.get('errcode', '?')}: {error.get('error', '')}"
        except (ValueError, AttributeError):
            detail = e.reason
        raise TotpCliError(f"the server refused ({e.code} {detail})", EXIT_REFUSED) from None
    except urllib.error.URLError as e:
        raise TotpCliError(f"cannot reach {args.url}: {e.reason}", EXIT_REFUSED) from None
    except OSError as e:
        raise TotpCliError(f"cannot reach {args.url}: {e.strerror or e}", EXIT_REFUSED) from None


def _run(action: str, args: argparse.Namespace, body: dict[str, Any]) -> dict[str, Any] | int:
    try:
        return _post(args, action, body)
    except TotpCliError as e:
        _say(f"error: {e}")
        return e.status


def print_qr(uri: str, out: TextIO) -> bool:
    """A terminal QR code of `uri` if the optional `qrcode` package is installed."""
    try:
        qrcode: Any = importlib.import_module("qrcode")
    except ImportError:
        return False
    code = qrcode.QRCode(border=2)
    code.add_data(uri)
    code.make(fit=True)
    code.print_ascii(out=out, invert=True)
    return True


def enroll(args: argparse.Namespace) -> int:
    reply = _run("enroll", args, {"user_id": args.user})
    if isinstance(reply, int):
        return reply
    uri = str(reply["otpauth_uri"])
    print(f"Enrolled {reply['user_id']}. Scan this in an authenticator app, or type the URI:")
    print(uri)
    if not print_qr(uri, sys.stdout):
        print("(install the `qrcode` package to get a QR code here)")
    print("The user logs in with the password followed by the 6-digit code, with no space.")
    return EXIT_OK


def reset(args: argparse.Namespace) -> int:
    reply = _run("reset", args, {"user_id": args.user})
    if isinstance(reply, int):
        return reply
    done = "removed" if reply.get("removed") else "had no second factor; nothing to remove"
    print(f"{reply['user_id']}: {done}")
    return EXIT_OK


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("New password: ")
    if first != getpass.getpass("Again: "):
        raise TotpCliError("the two passwords differ", EXIT_USAGE)
    return first


def set_password(args: argparse.Namespace) -> int:
    try:
        password = _read_password()
    except TotpCliError as e:
        _say(f"error: {e}")
        return e.status
    if not password:
        _say("error: empty password")
        return EXIT_USAGE
    reply = _run("password", args, {"user_id": args.user, "password": password})
    if isinstance(reply, int):
        return reply
    print(f"{reply['user_id']}: password set")
    return EXIT_OK
