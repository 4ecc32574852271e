"""`--tls-pin`: reach a server whose certificate is self-signed by checking its fingerprint.

In IP-only mode (no domain, so no public CA) `deploy/bin/init` prints the SHA-256 fingerprint
of the server's certificate; the admin commands given `--tls-pin FINGERPRINT` skip the CA
check and instead compare the leaf certificate's SHA-256 (of its DER form) with the pin right
after the TLS handshake, before a single byte of the request (and its access token) is sent.
A mismatch is an `OSError`, so each command reports it as "cannot reach" and exits 1.
Without a pin, urllib's own opener: normal CA and host name verification.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import ssl
import urllib.request
from typing import Any

OPTION = "--tls-pin"
_HEX = frozenset("0123456789abcdef")


class PinMismatchError(OSError):
    """The server's certificate is not the pinned one: nothing was sent."""


def parse_pin(text: str) -> bytes:
    """`AB:CD:...` with or without colons, any case, or openssl's whole `sha256
    Fingerprint=AB:CD:...` line: the 32 bytes."""
    digits = text.rpartition("=")[2].strip().replace(":", "").lower()
    if len(digits) != 64 or not set(digits) <= _HEX:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a SHA-256 fingerprint (64 hex digits, e.g. AB:CD:...:EF)"
        )
    return bytes.fromhex(digits)


def format_pin(pin: bytes) -> str:
    return ":".join(f"{byte:02X}" for byte in pin)


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        OPTION,
        type=parse_pin,
        metavar="SHA256",
        help="the SHA-256 fingerprint of the server's self-signed certificate (IP-only mode, "
        "printed by deploy/bin/init): trust that certificate only, instead of the CAs",
    )


def check_url(url: str, pin: bytes | None) -> str | None:
    """What is wrong with using `pin` with `url` (a usage error), or None."""
    if pin is not None and not url.lower().startswith("https://"):
        return f"{OPTION} needs an https:// --url (over http the token would travel in clear)"
    return None


def urlopen(
    request: urllib.request.Request, timeout: float, pin: bytes | None
) -> http.client.HTTPResponse:
    """urllib.request.urlopen, or with `pin` an opener that trusts that certificate only."""
    if pin is None:
        response: http.client.HTTPResponse = urllib.request.urlopen(  # noqa: S310
            request, timeout=timeout
        )
        return response
    # No HTTP handler and no redirect handler: nothing may carry the token to another
    # address or in clear; a 3xx is an error like any other.
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        _PinnedHandler(pin),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
        urllib.request.UnknownHandler(),  # any other scheme: URLError
    ):
        opener.add_handler(handler)
    pinned: http.client.HTTPResponse = opener.open(request, timeout=timeout)
    return pinned


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection that trusts exactly one certificate, checked before any request."""

    def __init__(self, host: str, *, pin: bytes, **kwargs: Any) -> None:
        context = ssl.create_default_context()
        # The pin replaces the CA and host name checks (a self-signed certificate for an IP).
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        kwargs["context"] = context
        super().__init__(host, **kwargs)
        self._pin = pin

    def connect(self) -> None:
        super().connect()  # TCP (and proxy tunnel), then the TLS handshake
        sock: ssl.SSLSocket = self.sock
        der = sock.getpeercert(binary_form=True)
        if der is None or not hmac.compare_digest(hashlib.sha256(der).digest(), self._pin):
            seen = "none" if der is None else format_pin(hashlib.sha256(der).digest())
            sock.close()
            self.sock = None
            raise PinMismatchError(
                f"the server's certificate does not match {OPTION} (it presented {seen}): "
                "nothing was sent. Someone may be intercepting the connection, or the "
                "certificate changed: check the fingerprint with the server's operator"
            )


class _PinnedHandler(urllib.request.HTTPSHandler):
    def __init__(self, pin: bytes) -> None:
        super().__init__()
        self._pin = pin

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        pin = self._pin

        def connection(host: str, **kwargs: Any) -> PinnedHTTPSConnection:
            return PinnedHTTPSConnection(host, pin=pin, **kwargs)

        return self.do_open(connection, req)
