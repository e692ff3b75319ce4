"""A webhook endpoint for tests: an HTTP server on 127.0.0.1 that records the JSON
POSTed to it, refusing the first `refuse` POSTs with `status` so that a sender's
retries show."""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any


class WebhookSink:
    def __init__(self, refuse: int = 1, status: int = 503) -> None:
        self.received: list[dict[str, Any]] = []
        self.refused = 0
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if sink.refused < refuse:
                    sink.refused += 1
                    self.send_response(status)
                else:
                    sink.received.append(json.loads(body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def __enter__(self) -> WebhookSink:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
