"""A minimal remote homeserver on 127.0.0.1, to prove what the guard does with inbound federation.

It is just enough of a Matrix server for a real Synapse to believe it: a TLS listener (self-signed,
made here) whose server name is `127.0.0.1:<port>`, an ed25519 signing key published at
`GET /_matrix/key/v2/server`, events hashed and signed as the room version requires (with
Synapse's own library functions), and federation requests signed with an X-Matrix header.
It serves nothing else and only ever talks to 127.0.0.1.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
from canonicaljson import encode_canonical_json
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.crypto.event_signing import add_hashes_and_signatures
from synapse.events import make_event_from_dict

LOOPBACK = "127.0.0.1"


def everything_but_loopback() -> list[str]:
    """An `ip_range_blacklist` that leaves Synapse only 127.0.0.0/8 to talk to (IPv6 all blocked).

    Older Synapse (1.100) ignores `ip_range_whitelist` for federation requests, so the loopback
    peer must be let through by the blocklist itself; this keeps every other address blocked.
    """
    everything = ipaddress.ip_network("0.0.0.0/0")
    rest = everything.address_exclude(ipaddress.ip_network("127.0.0.0/8"))
    return [*sorted(str(net) for net in rest), "::/0"]


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1 (Synapse under test does not verify it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "remote.crt", directory / "remote.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class FakeRemote:
    """The remote server: `server_name` is `127.0.0.1:<port>`; `seen` lists what Synapse asked."""

    def __init__(self, workdir: Path) -> None:
        self.signing_key = generate_signing_key("fake1")
        self.key_id = f"{self.signing_key.alg}:{self.signing_key.version}"
        self.seen: list[tuple[str, str]] = []
        cert, key = self_signed_certificate(workdir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._httpd = ThreadingHTTPServer((LOOPBACK, 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.port = int(self._httpd.server_address[1])
        self.server_name = f"{LOOPBACK}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeRemote:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    # -- what it serves ----------------------------------------------------------------------

    def key_response(self) -> dict[str, Any]:
        """`GET /_matrix/key/v2/server`: our verify key, signed by itself."""
        verify_key = get_verify_key(self.signing_key)
        body = {
            "server_name": self.server_name,
            "valid_until_ts": int(time.time() * 1000) + 24 * 3600 * 1000,
            "verify_keys": {self.key_id: {"key": encode_verify_key_base64(verify_key)}},
            "old_verify_keys": {},
        }
        return sign_json(body, self.server_name, self.signing_key)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        remote = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self, status: int, body: Mapping[str, Any]) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                remote.seen.append((self.command, self.path))
                if self.command == "GET" and self.path.split("?")[0] == "/_matrix/key/v2/server":
                    self._reply(200, remote.key_response())
                else:
                    self._reply(404, {"errcode": "M_UNRECOGNIZED", "error": "not served"})

            do_GET = do_PUT = do_POST = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass  # `seen` records the requests; keep pytest's output clean

        return Handler

    # -- events ------------------------------------------------------------------------------

    def user(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    def new_room_id(self) -> str:
        return f"!{uuid.uuid4().hex[:18]}:{self.server_name}"

    def event(
        self,
        room_version: str,
        *,
        room_id: str,
        sender: str,
        event_type: str,
        content: Mapping[str, Any],
        state_key: str | None = None,
        prev_events: list[str] | None = None,
        auth_events: list[str] | None = None,
        depth: int = 1,
    ) -> tuple[str, dict[str, Any]]:
        """A PDU as this server would send it: hashed and signed. Returns (event_id, pdu)."""
        version = KNOWN_ROOM_VERSIONS[room_version]
        pdu: dict[str, Any] = {
            "room_id": room_id,
            "sender": sender,
            "type": event_type,
            "content": dict(content),
            "origin_server_ts": int(time.time() * 1000),
            "depth": depth,
            "prev_events": list(prev_events or []),
            "auth_events": list(auth_events or []),
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        add_hashes_and_signatures(version, pdu, self.server_name, self.signing_key)
        return make_event_from_dict(pdu, version).event_id, pdu

    def invite_event(
        self, room_version: str, inviter: str, invitee: str
    ) -> tuple[str, dict[str, Any]]:
        """A room of ours (create, inviter's join, invite-only) and an invite for `invitee`."""
        room_id = self.new_room_id()
        create_id, _ = self.event(
            room_version,
            room_id=room_id,
            sender=inviter,
            event_type="m.room.create",
            state_key="",
            content={"creator": inviter, "room_version": room_version},
        )
        join_id, _ = self.event(
            room_version,
            room_id=room_id,
            sender=inviter,
            event_type="m.room.member",
            state_key=inviter,
            content={"membership": "join"},
            prev_events=[create_id],
            auth_events=[create_id],
            depth=2,
        )
        return self.event(
            room_version,
            room_id=room_id,
            sender=inviter,
            event_type="m.room.member",
            state_key=invitee,
            content={"membership": "invite"},
            prev_events=[join_id],
            auth_events=[create_id, join_id],
            depth=3,
        )

    # -- requests to the server under test ---------------------------------------------------

    def request(
        self,
        method: str,
        base_url: str,
        path: str,
        destination: str,
        content: Mapping[str, Any] | None = None,
    ) -> tuple[int, Any]:
        """A federation request signed with the X-Matrix scheme (origin, destination, key, sig
        over the canonical JSON of method, uri, origin, destination and content)."""
        body = None if content is None else encode_canonical_json(dict(content))
        prepared = requests.Request(method, base_url + path, data=body).prepare()
        signed: dict[str, Any] = {
            "method": method,
            "uri": prepared.path_url,
            "origin": self.server_name,
            "destination": destination,
        }
        if content is not None:
            signed["content"] = dict(content)
        signed = sign_json(signed, self.server_name, self.signing_key)
        signature = signed["signatures"][self.server_name][self.key_id]
        prepared.headers["Authorization"] = (
            f'X-Matrix origin="{self.server_name}",destination="{destination}",'
            f'key="{self.key_id}",sig="{signature}"'
        )
        if body is not None:
            prepared.headers["Content-Type"] = "application/json"
        with requests.Session() as session:
            response = session.send(prepared, timeout=60)
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text

    def send_invite(
        self, base_url: str, destination: str, room_version: str, event_id: str, pdu: dict[str, Any]
    ) -> tuple[int, Any]:
        """`PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`."""
        path = "/_matrix/federation/v2/invite/{}/{}".format(
            *(requests.utils.quote(part, safe="") for part in (pdu["room_id"], event_id))
        )
        content = {"room_version": room_version, "event": pdu, "invite_room_state": []}
        return self.request("PUT", base_url, path, destination, content)

    def send_transaction(
        self, base_url: str, destination: str, pdus: list[dict[str, Any]]
    ) -> tuple[int, Any]:
        """`PUT /_matrix/federation/v1/send/{txnId}` with these PDUs and no EDU."""
        content = {
            "origin": self.server_name,
            "origin_server_ts": int(time.time() * 1000),
            "pdus": pdus,
            "edus": [],
        }
        return self.request(
            "PUT", base_url, f"/_matrix/federation/v1/send/{uuid.uuid4().hex}", destination, content
        )


def running_remote(workdir: Path) -> Iterator[FakeRemote]:
    """For a fixture: a started remote, stopped afterwards."""
    remote = FakeRemote(workdir).start()
    try:
        yield remote
    finally:
        remote.stop()
