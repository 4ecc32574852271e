"""A fake CAS identity provider on 127.0.0.1: it vouches for any ticket, as a real IdP would
for a user who logged in there. Used to prove that SSO cannot auto-provision accounts."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from tests.integration.harness import free_port

SUCCESS = """<cas:serviceResponse xmlns:cas="http://www.yale.edu/tp/cas">
  <cas:authenticationSuccess><cas:user>{user}</cas:user></cas:authenticationSuccess>
</cas:serviceResponse>"""


class FakeCas:
    def __init__(self, user: str) -> None:
        self.user = user
        self.port = free_port()
        self.validations = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path.endswith("/proxyValidate") and parse_qs(url.query).get("ticket"):
                    fake.validations += 1
                    body = SUCCESS.format(user=fake.user).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/xml")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_response(404)
                    self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/cas"

    def __enter__(self) -> FakeCas:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
