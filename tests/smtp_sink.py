"""A small real SMTP server on 127.0.0.1 for tests: keeps what it is sent.

Speaks enough ESMTP for smtplib: EHLO/HELO, AUTH PLAIN, MAIL, RCPT, DATA (with
dot-unstuffing), RSET, NOOP, QUIT. It can refuse the first few messages with a
transient error (451) to exercise retries, and checks a password if given one.
"""

from __future__ import annotations

import base64
import socket
import socketserver
import threading
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from types import TracebackType


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage


@dataclass
class SinkState:
    password: str | None = None
    refuse: int = 0  # messages still to refuse with 451
    received: list[Received] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Session(socketserver.StreamRequestHandler):
    server: _Server

    def _say(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        state = self.server.state
        sender, recipients = "", list[str]()
        self._say("220 sink ESMTP")
        while line := self.rfile.readline():
            command, _, rest = line.decode().rstrip("\r\n").partition(" ")
            verb = command.upper()
            if verb == "EHLO":
                self._say("250-sink\r\n250-AUTH PLAIN\r\n250 8BITMIME")
            elif verb == "HELO" or verb in ("NOOP", "RSET"):
                self._say("250 ok")
            elif verb == "AUTH":
                _, _, blob = rest.partition(" ")
                _, user, password = base64.b64decode(blob).decode().split("\0")
                if state.password is not None and password != state.password:
                    self._say("535 authentication failed")
                    continue
                state.logins.append(user)
                self._say("235 ok")
            elif verb == "MAIL":
                with state.lock:
                    if state.refuse > 0:
                        state.refuse -= 1
                        self._say("451 try again later")
                        continue
                sender, recipients = rest.partition(":")[2].strip("<> "), []
                self._say("250 ok")
            elif verb == "RCPT":
                recipients.append(rest.partition(":")[2].strip("<> "))
                self._say("250 ok")
            elif verb == "DATA":
                self._say("354 go on")
                data = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data += chunk[1:] if chunk.startswith(b"..") else chunk
                message = BytesParser(policy=policy.default).parsebytes(data)
                assert isinstance(message, EmailMessage)
                state.received.append(Received(sender, recipients, message))
                self._say("250 queued")
            elif verb == "QUIT":
                self._say("221 bye")
                return
            else:
                self._say("502 not implemented")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    address_family = socket.AF_INET

    def __init__(self, state: SinkState) -> None:
        super().__init__(("127.0.0.1", 0), _Session)
        self.state = state


class SmtpSink:
    """`with SmtpSink() as sink:` serves on `sink.port` until the block ends."""

    def __init__(self, password: str | None = None, refuse: int = 0) -> None:
        self.state = SinkState(password=password, refuse=refuse)
        self._server = _Server(self.state)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def received(self) -> list[Received]:
        return self.state.received

    def __enter__(self) -> SmtpSink:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
