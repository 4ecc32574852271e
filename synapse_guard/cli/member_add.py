"""`synapse-guard member add`: a new member's account, second factor and onboarding sheet at once.

    synapse-guard member add @alice:example.org --url URL --token-file FILE --sheet alice.pdf
        [--admin] [--name "Alice Martin"] [--homeserver URL] [--lang fr|en|both]
        [--show-password] [--tls-pin SHA256]

Over HTTP with a server admin's access token (read from a file): creates the account with
Synapse's admin API (`PUT /_synapse/admin/v2/users/{user_id}`) and a random password, enrols
it in the second factor when the server runs auth.totp (the guard's `totp/enroll` endpoint
answers only then), and writes the onboarding sheet (cli/onboarding.py) with mode 0600.
The password and the TOTP secret go to the sheet only: nothing secret reaches the terminal
unless --show-password. Steps that can fail are checked before the account exists (the sheet
file is created first, the user must not exist yet, the token must be an admin's).
With --tls-pin (IP-only mode, a self-signed certificate) every request trusts that certificate
only (cli/pinning.py), and the sheet prints its fingerprint for the member's phone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from synapse_guard.cli import pinning
from synapse_guard.cli.lockdown import TokenFileError, read_token
from synapse_guard.cli.onboarding import LANGUAGES, Credentials, render_sheet

ENROLL_PATH = "/_synapse/client/synapse_guard/totp/enroll"
USERS_PATH = "/_synapse/admin/v2/users/"
TIMEOUT_S = 30
EXIT_OK = 0
EXIT_REFUSED = 1  # the server refused or could not be reached, or the user exists
EXIT_USAGE = 2
# Letters and digits that cannot be mistaken for one another on paper (no 0 O o, 1 l I).
_ALPHABET = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
_GROUPS, _GROUP_LEN = 4, 4  # 16 symbols of 56: 92 bits
# What Synapse's own check accepts as a user ID the guard can enrol (totp/provider.py).
_USER_ID = re.compile(r"@[a-z0-9._=/+-]+:[A-Za-z0-9.:\[\]-]+")


class MemberAddError(Exception):
    def __init__(self, message: str, status: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.status = status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `member add` (its parser is made by cli/member.py)."""
    parser.add_argument("user", metavar="USER_ID", help="the new member, e.g. @alice:example.org")
    parser.add_argument(
        "--url", required=True, help="the server's base URL, e.g. https://matrix.example.org"
    )
    parser.add_argument(
        "--token-file",
        required=True,
        metavar="FILE",
        help="a file holding a server admin's access token (never given on the command line)",
    )
    parser.add_argument(
        "--sheet",
        required=True,
        metavar="FILE.pdf",
        help="where to write the onboarding sheet (mode 0600; refused if it exists)",
    )
    parser.add_argument("--admin", action="store_true", help="make the account a server admin")
    parser.add_argument("--name", metavar="NAME", help="the display name teammates see")
    parser.add_argument(
        "--homeserver",
        metavar="URL",
        help="the address members' apps use, printed on the sheet (default: --url)",
    )
    parser.add_argument(
        "--lang",
        choices=(*LANGUAGES, "both"),
        default="both",
        help="the sheet's language: one page each (default: both)",
    )
    parser.add_argument(
        "--show-password",
        action="store_true",
        help="also print the initial password here (it is on the sheet either way)",
    )
    pinning.add_argument(parser)  # also printed on the sheet, for the phone to check
    parser.set_defaults(handler=add)


def new_password() -> str:
    """Random, easy to copy from paper, and within homeserver.d/20-accounts.yaml's policy
    (12+ characters, a digit, a lower- and an upper-case letter; the hyphens are symbols)."""
    while True:
        groups = [
            "".join(secrets.choice(_ALPHABET) for _ in range(_GROUP_LEN)) for _ in range(_GROUPS)
        ]
        password = "-".join(groups)
        if (
            any(c.isdigit() for c in password)
            and any(c.islower() for c in password)
            and any(c.isupper() for c in password)
        ):
            return password


def add(args: argparse.Namespace) -> int:
    try:
        return _add(args)
    except MemberAddError as e:
        print(f"synapse-guard: error: {e}", file=sys.stderr)
        return e.status


def _add(args: argparse.Namespace) -> int:
    user_id: str = args.user
    if not _USER_ID.fullmatch(user_id) or len(user_id) > 255:
        raise MemberAddError(
            f"{user_id!r} is not a full user ID (@localpart:server, localpart a-z 0-9 . _ = / + -)",
            EXIT_USAGE,
        )
    for option, url in (("--url", args.url), ("--homeserver", args.homeserver)):
        if url is not None and not _is_http_url(url):
            raise MemberAddError(f"{option}: {url!r} is not an http(s) URL", EXIT_USAGE)
    try:
        token = read_token(args.token_file)
    except TokenFileError as e:
        raise MemberAddError(f"--token-file: {e}", EXIT_USAGE) from None
    languages = LANGUAGES if args.lang == "both" else (args.lang,)
    server = _Server(args.url, token, args.tls_pin)

    sheet = Path(args.sheet)
    try:  # first, so that an unwritable path stops us before the account exists
        fd = os.open(sheet, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise MemberAddError(f"--sheet: cannot create {sheet}: {e.strerror}", EXIT_USAGE) from None
    written = False
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        password, otpauth_uri = _create(server, user_id, admin=args.admin, name=args.name)
        pdf = render_sheet(
            Credentials(
                homeserver=args.homeserver or args.url,
                user_id=user_id,
                password=password,
                otpauth_uri=otpauth_uri,
                tls_fingerprint=None if args.tls_pin is None else pinning.format_pin(args.tls_pin),
            ),
            languages,
        )
        with os.fdopen(fd, "wb") as stream:
            fd = -1
            stream.write(pdf)
            stream.flush()
            os.fsync(stream.fileno())
        written = True
    finally:
        if fd >= 0:
            os.close(fd)
        if not written:
            with contextlib.suppress(OSError):
                sheet.unlink()

    factor = "with the second factor enrolled" if otpauth_uri else "(auth.totp is off)"
    print(f"Created {user_id}{' as a server admin' if args.admin else ''} {factor}.")
    print(
        f"Onboarding sheet: {sheet} (mode 0600). It holds the password"
        f"{' and the TOTP secret' if otpauth_uri else ''}: print it, hand it over in person, "
        "then delete the file."
    )
    if args.show_password:
        print(f"Initial password: {password}")
    return EXIT_OK


def _create(
    server: _Server, user_id: str, *, admin: bool, name: str | None
) -> tuple[str, str | None]:
    """Create the account (and enrol it): its password and otpauth:// URI (None: totp off)."""
    users = USERS_PATH + urllib.parse.quote(user_id, safe="")
    status, reply = server.request("GET", users)
    if status == 200:
        raise MemberAddError(f"{user_id} already exists: nothing changed")
    if status != 404:
        raise MemberAddError(f"cannot look {user_id} up: {_describe(status, reply)}")
    totp = _totp_is_on(server, user_id)

    password = new_password()
    body: dict[str, Any] = {"password": password, "admin": admin}
    if name:
        body["displayname"] = name
    status, reply = server.request("PUT", users, body)
    if status == 200:  # Synapse's answer for an update: another admin created it meanwhile
        raise MemberAddError(
            f"{user_id} was created by someone else meanwhile, and this changed it: check it"
        )
    if status != 201:
        raise MemberAddError(f"the server refused to create {user_id}: {_describe(status, reply)}")
    if not totp:
        return password, None
    status, reply = server.request("POST", ENROLL_PATH, {"user_id": user_id})
    uri = reply.get("otpauth_uri") if isinstance(reply, dict) else None
    if status != 200 or not isinstance(uri, str) or not uri.startswith("otpauth://"):
        raise MemberAddError(
            f"{user_id} was created but not enrolled ({_describe(status, reply)}), and no sheet "
            f"was written: run `synapse-guard totp enroll` and `totp set-password` for them"
        )
    return password, uri


def _totp_is_on(server: _Server, user_id: str) -> bool:
    """Ask the enrol endpoint about the user who does not exist yet: with auth.totp on it
    answers 404 M_NOT_FOUND ("no such user"); off, it is not registered (404, not that)."""
    status, reply = server.request("POST", ENROLL_PATH, {"user_id": user_id})
    errcode = reply.get("errcode") if isinstance(reply, dict) else None
    if status == 404:
        return errcode == "M_NOT_FOUND"
    raise MemberAddError(f"cannot tell whether auth.totp is on: {_describe(status, reply)}")


class _Server:
    def __init__(self, url: str, token: str, tls_pin: bytes | None = None) -> None:
        self._url = url.rstrip("/")
        self._token = token
        self._tls_pin = tls_pin

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, object]:
        """(status, the JSON answer or None); MemberAddError only when nothing answered."""
        request = urllib.request.Request(  # noqa: S310 (scheme checked by _add)
            self._url + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
        )
        try:
            with pinning.urlopen(request, TIMEOUT_S, self._tls_pin) as response:
                return response.status, _json(response.read())
        except urllib.error.HTTPError as e:
            return e.code, _json(e.read())
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise MemberAddError(f"cannot reach {self._url}: {reason}") from None


def _json(data: bytes) -> object:
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError:
        return None


def _describe(status: int, reply: object) -> str:
    if isinstance(reply, dict) and "errcode" in reply:
        return f"HTTP {status} {reply.get('errcode')}: {reply.get('error', '')}"
    return f"HTTP {status}"


def _is_http_url(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and url.isascii()
