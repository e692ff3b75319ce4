"""What a command gets to work with: settings, a client made on first use, consoles."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, BinaryIO

from rich.console import Console, RenderableType

from cli.client import ApsisClient
from cli.config import Settings
from cli.feeds import FeedClient

# When output is not a terminal, tables are not squeezed into 80 columns.
PIPE_WIDTH = 200


def make_console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else PIPE_WIDTH
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


@dataclass
class Context:
    """One invocation's surroundings; the client is made only by commands that need it."""

    settings: Settings
    poll_interval: float = 0.5
    clients: list[ApsisClient] = field(default_factory=list)

    @cached_property
    def client(self) -> ApsisClient:
        client = ApsisClient(self.settings.server, self.settings.token, self.settings.ca)
        self.clients.append(client)
        return client

    @cached_property
    def feeds(self) -> FeedClient:
        """Opens the server's websocket feeds, with the same token and CA."""
        return FeedClient(self.settings.server, self.settings.token, self.settings.ca)

    @property
    def stderr_tty(self) -> bool:
        return sys.stderr.isatty()

    @property
    def stdout_tty(self) -> bool:
        return sys.stdout.isatty()

    @cached_property
    def console(self) -> Console:
        return make_console()

    def show(self, renderable: RenderableType) -> None:
        self.console.print(renderable)

    def print_json(self, value: Any) -> None:
        """The server's JSON, indented, on stdout (no colours, no markup)."""
        sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")

    def say(self, message: str) -> None:
        """A plain line on stdout, flushed: a reader of a pipe or file sees it at once."""
        sys.stdout.write(message + "\n")
        sys.stdout.flush()

    def warn(self, message: str) -> None:
        sys.stderr.write(message + "\n")

    @property
    def stdout_bytes(self) -> BinaryIO:
        sys.stdout.flush()
        return sys.stdout.buffer

    def now(self) -> float:
        return time.time()

    def sleep(self) -> None:
        """Pause between two polls (when a feed cannot be used)."""
        time.sleep(self.poll_interval)

    def close(self) -> None:
        for client in self.clients:
            client.close()
