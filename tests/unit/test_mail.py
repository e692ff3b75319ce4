"""Email actions' pieces: the `smtp:` config, the message, and sending it to a real
SMTP server on loopback."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from apsis_common.states import State
from apsis_server.actions.mail import SmtpSettings, compose, send
from apsis_server.config import parse_config
from apsis_server.core.fields import Invalid
from apsis_server.core.runs import Run
from tests.smtp_sink import SmtpSink


def _run() -> Run:
    return Run(
        run_id="r42",
        job_id="reports/daily",
        args={"date": "2026-11-27"},
        state=State.FAILURE,
        schedule_time=1_800_000_000.0,
        times={"scheduled": 1_799_999_000.0, "running": 1_800_000_000.5},
        message="exit code 3",
    )


def test_no_smtp_section_means_no_email(tmp_path: Path) -> None:
    assert parse_config({}, tmp_path).smtp is None


def test_smtp_defaults_and_ssl_port(tmp_path: Path) -> None:
    plain = parse_config({"smtp": {"host": "mail.example.com"}}, tmp_path).smtp
    assert plain is not None
    assert (plain.port, plain.security, plain.username) == (25, "none", None)
    assert plain.sender.startswith("apsis@")
    ssl = parse_config({"smtp": {"host": "m", "security": "ssl"}}, tmp_path).smtp
    assert ssl is not None and ssl.port == 465


def test_smtp_password_is_read_from_its_file_and_never_shown(tmp_path: Path) -> None:
    (tmp_path / "smtp.pw").write_text("s3cret-pass\n")
    config = {"smtp": {"host": "m", "username": "u", "password_file": "smtp.pw"}}
    smtp = parse_config(config, tmp_path).smtp
    assert smtp is not None and smtp.password == "s3cret-pass"
    assert "s3cret-pass" not in repr(smtp)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"port": 25}, "smtp.host: missing"),
        ({"host": "m", "port": 70000}, "smtp.port: expected a port number (1-65535), got 70000"),
        ({"host": "m", "security": "tls"}, "smtp.security: expected 'none' or 'starttls' or"),
        ({"host": "m", "username": "u"}, "smtp: give both username and password_file"),
        ({"host": "m", "username": "u", "password_file": "nope"}, "smtp.password_file: cannot"),
        ({"host": "m", "colour": "red"}, "smtp.colour"),
    ],
)
def test_bad_smtp_sections_say_what_is_wrong(
    tmp_path: Path, section: dict[str, object], expected: str
) -> None:
    with pytest.raises(Invalid) as caught:
        parse_config({"smtp": section}, tmp_path)
    assert expected in str(caught.value)


def test_the_message_says_which_run_ended_how() -> None:
    settings = SmtpSettings("m", sender="apsis@example.com")
    message = compose(settings, ("ops@example.com", "b@example.com"), _run(), "https://apsis/")
    assert message["Subject"] == "apsis: reports/daily r42 failure"
    assert message["To"] == "ops@example.com, b@example.com"
    assert message["From"] == "apsis@example.com"
    body = message.get_content()
    assert "Run r42 of job reports/daily is failure." in body
    assert "date=2026-11-27" in body
    assert "exit code 3" in body
    assert "https://apsis/runs/r42" in body


def test_send_logs_in_and_delivers(tmp_path: Path) -> None:
    with SmtpSink(password="pw") as sink:
        settings = SmtpSettings("127.0.0.1", sink.port, username="apsis", password="pw")
        send(settings, compose(settings, ("ops@example.com",), _run(), None))
        assert sink.state.logins == ["apsis"]
        [got] = sink.received
        assert got.recipients == ["ops@example.com"]
        assert got.message["Subject"] == "apsis: reports/daily r42 failure"


def test_send_raises_what_the_server_said() -> None:
    with SmtpSink(password="right") as sink:
        settings = SmtpSettings("127.0.0.1", sink.port, username="apsis", password="wrong")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            send(settings, compose(settings, ("ops@example.com",), _run(), None))
        assert sink.received == []
