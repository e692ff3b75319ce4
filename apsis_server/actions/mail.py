"""Email actions: the SMTP settings, the message about a run, and sending it.

`smtp:` in the server config names the server that relays mail; without it an
email action only notes in the run log that it was skipped. Sending is blocking
(`smtplib`), so the action runner calls `send` in a worker thread. The password
is read from a file at startup and never shown: not in the config's repr, the
log or a run log.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from apsis_common.times import format_time
from apsis_server.core.fields import (
    FieldError,
    Fields,
    Invalid,
    choice,
    port_number,
    positive_duration,
    string,
)
from apsis_server.core.runs import Run

SECURITY = ("none", "starttls", "ssl")


@dataclass(frozen=True)
class SmtpSettings:
    """Where mail goes, and how to log in there."""

    host: str
    port: int = 25
    security: str = "none"  # none | starttls | ssl
    sender: str = "apsis@localhost"  # the config's `from`; by default apsis@ this host
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 10.0


def parse_smtp(f: Fields, base: Path) -> SmtpSettings:
    """`smtp: {host, port, security, from, username, password_file, timeout}`."""
    host = f.need("host", string)
    security = f.take("security", choice(*SECURITY), "none")
    port = f.take("port", port_number, 465 if security == "ssl" else 25)
    sender = f.take("from", string, f"apsis@{socket.getfqdn()}")
    username = f.take("username", string, None)
    password_file = f.take("password_file", lambda v, p: base / string(v, p), None)
    timeout = f.take("timeout", positive_duration, 10.0)
    f.done()
    if (username is None) != (password_file is None):
        raise Invalid([FieldError(f.path, "give both username and password_file, or neither")])
    password = None
    if password_file is not None:
        try:
            password = password_file.read_text().strip()
        except OSError as exc:
            where = f.at("password_file")
            raise Invalid(
                [FieldError(where, f"cannot read {password_file}: {exc.strerror}")]
            ) from None
    return SmtpSettings(host, port, security, sender, username, password, timeout)


def compose(
    settings: SmtpSettings, to: tuple[str, ...], run: Run, public_url: str | None
) -> EmailMessage:
    """The message telling `to` how a run ended."""
    message = EmailMessage()
    message["From"] = settings.sender
    message["To"] = ", ".join(to)
    message["Subject"] = f"apsis: {run.job_id} {run.run_id} {run.state.value}"
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=settings.sender.rpartition("@")[2] or None)
    args = " ".join(f"{k}={v}" for k, v in run.args.items()) or "(none)"
    lines = [
        f"Run {run.run_id} of job {run.job_id} is {run.state.value}.",
        "",
        f"job:           {run.job_id}",
        f"args:          {args}",
        f"state:         {run.state.value}",
        f"message:       {run.message or ''}",
        f"schedule time: {format_time(run.schedule_time) or '(none)'}",
    ]
    lines += [f"{name + ':':<15}{format_time(t)}" for name, t in run.times.items()]
    if public_url:
        lines += ["", f"{public_url.rstrip('/')}/runs/{run.run_id}"]
    message.set_content("\n".join(lines) + "\n")
    return message


def send(settings: SmtpSettings, message: EmailMessage) -> None:
    """Hand the message to the SMTP server (blocking); smtplib or OS errors if not."""
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    if settings.security == "ssl":
        smtp = smtplib.SMTP_SSL(
            settings.host, settings.port, timeout=settings.timeout, context=context
        )
    else:
        smtp = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
    with smtp:
        if settings.security == "starttls":
            smtp.starttls(context=context)
        if settings.username is not None and settings.password is not None:
            smtp.login(settings.username, settings.password)
        smtp.send_message(message)
