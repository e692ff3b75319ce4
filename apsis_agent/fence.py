"""Fencing of deposed leaders: the newest leadership epoch this agent has seen.

With servers sharing a PostgreSQL store, every request of the leader that changes
something carries its epoch (`?leader_epoch=N`, under the signature). The agent
keeps the newest it has seen in `leader_epoch` (written, and fsynced, before the
request is served, so it survives a restart) and refuses an older one with 409:
a leader deposed while cut off from the database can never start or stop anything
here once its successor has spoken to this agent. The successor speaks first
thing on connecting (`PUT /leader`, which also points the webhook at it).

A request without an epoch comes from the only server of a SQLite install and
passes. Epochs below 0 never pass: a server standing by sends -1.

When the file cannot be written (a full disk), the newer epoch is kept in memory
and fences all the same, and the file is written with a later request: only a
restart of the agent in between would forget it (logged once). Refusing the
request instead would hold up the new leader's stops while the disk is full.
"""

from __future__ import annotations

import logging
from pathlib import Path

from apsis_common.errors import BadInput, Conflict
from apsis_common.tls import write_private

PARAM = "leader_epoch"

log = logging.getLogger(__name__)


class Fence:
    """The newest epoch seen, persisted in `path`."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._unsaved = False  # the newest epoch is not in the file yet
        try:
            self.newest = int(path.read_text().strip())
        except FileNotFoundError:
            self.newest = 0
        except ValueError:
            raise BadInput(f"{path}: not an epoch (delete it to accept any leader)") from None

    def admit(self, text: str) -> None:
        """Let a request carrying `leader_epoch=text` through, or raise Conflict."""
        try:
            epoch = int(text)
        except ValueError:
            raise BadInput(f"{PARAM} must be an integer") from None
        if epoch < 0:
            raise Conflict("the server sending this does not lead: only the leader acts")
        if epoch < self.newest:
            raise Conflict(
                f"leader epoch {epoch} is older than epoch {self.newest}, which this "
                "agent has seen: another server leads now"
            )
        if epoch > self.newest or self._unsaved:
            self.newest = epoch = max(epoch, self.newest)
            try:
                write_private(self._path, f"{epoch}\n")
            except OSError as exc:
                if not self._unsaved:
                    log.error("cannot persist leader epoch %d (kept in memory): %s", epoch, exc)
                self._unsaved = True
                return
            if self._unsaved:
                log.info("leader epoch %d persisted", epoch)
            self._unsaved = False
