"""The client side of the lockdown endpoints, for `synapse-guard lockdown` and `checkin`.

Standard library only (urllib): the CLI runs on operators' machines and in cron jobs.
"""

from __future__ import annotations

import datetime
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from synapse_guard.cli import pinning

LOCKDOWN_PATH = "/_synapse/client/synapse_guard/lockdown"
CHECKIN_PATH = "/_synapse/client/synapse_guard/checkin"
TIMEOUT_S = 30


class ClientError(Exception):
    """The server could not be reached or refused: the message says which, without the token."""


class TokenFileError(Exception):
    """The token file is missing, unreadable or empty."""


def read_token(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise TokenFileError(f"cannot read {path}: {reason}") from None
    if not token or any(c.isspace() for c in token):
        raise TokenFileError(f"{path} must hold one access token and nothing else")
    return token


def call(
    url: str,
    path: str,
    token: str,
    body: dict[str, Any] | None = None,
    *,
    tls_pin: bytes | None = None,
) -> dict[str, Any]:
    """GET (no body) or POST (a JSON body) one endpoint; the JSON answer or ClientError.
    With `tls_pin`, the server's certificate must be that one (cli/pinning.py)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 (the operator gives the URL)
        url.rstrip("/") + path,
        data=data,
        method="GET" if body is None else "POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with pinning.urlopen(request, TIMEOUT_S, tls_pin) as response:
            answer = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        raise ClientError(f"HTTP {e.code}: {_error_text(e)}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise ClientError(f"cannot reach {url}: {reason}") from None
    except ValueError:
        raise ClientError(f"{url} did not answer JSON: is this the guard's server?") from None
    if not isinstance(answer, dict):
        raise ClientError(f"{url} answered something other than a JSON object")
    return answer


def _error_text(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read().decode("utf-8"))
    except (ValueError, OSError):
        return str(error.reason)
    if isinstance(body, dict):
        return f"{body.get('errcode', '?')}: {body.get('error', '')}".strip()
    return str(error.reason)


def _when(ms: object) -> str:
    if not isinstance(ms, int) or isinstance(ms, bool):
        return "unknown"
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(status: dict[str, Any]) -> str:
    """One human line about a status answer (times in UTC)."""
    if status.get("locked"):
        line = f"locked down (cause: {status.get('cause')}, since {_when(status.get('since'))})"
    else:
        line = "open"
    deadman = status.get("deadman")
    if isinstance(deadman, dict) and deadman.get("enabled"):
        interval = deadman.get("interval_ms")
        seconds = f"{interval // 1000} s" if isinstance(interval, int) else "unknown"
        line += (
            f"; dead man's switch: interval {seconds}, last check-in "
            f"{_when(deadman.get('last_checkin'))}, deadline {_when(deadman.get('deadline'))}"
        )
    return line
