"""Email actions through the real server to a real SMTP server on loopback."""

from __future__ import annotations

from pathlib import Path

from tests.harness import Server, running_server, wait_for
from tests.smtp_sink import SmtpSink

JOBS = {
    "nightly": (
        "params: [day]\n"
        "program: 'echo report {{ day }}; exit 3'\n"
        "action: {type: email, to: ['ops+{{ job_id }}@example.com'], states: [failure]}\n"
    ),
    "quiet": "program: 'true'\naction: {type: email, to: [ops@example.com], states: [failure]}\n",
}


def _log(server: Server, run_id: str) -> list[str]:
    return [e["message"] for e in server.get(f"/runs/{run_id}/log")["log"]]


def test_a_failed_run_is_mailed_after_a_refusal_and_the_password_stays_secret(
    tmp_path: Path,
) -> None:
    (tmp_path / "smtp.pw").write_text("hunter2-not-in-logs\n")
    with SmtpSink(password="hunter2-not-in-logs", refuse=1) as sink:
        config = (
            f"smtp: {{host: 127.0.0.1, port: {sink.port}, from: apsis@example.com,"
            f" username: apsis, password_file: smtp.pw}}\n"
        )
        with running_server(tmp_path, JOBS, config) as server:
            quiet = server.schedule("quiet")
            run_id = server.schedule("nightly", {"day": "2026-11-27"})
            server.wait_finished(run_id)
            server.wait_finished(quiet)
            got = wait_for(lambda: sink.received, 15, "the email")
            log = wait_for(
                lambda: [m for m in _log(server, run_id) if "delivered" in m], 10, "delivery log"
            )
            assert log == ["email to ops+nightly@example.com delivered (attempt 2)"]
            assert any("451" in m and "attempt 1" in m for m in _log(server, run_id))
            assert not any("email" in m for m in _log(server, quiet))  # succeeded: no mail
            server_log = server.log()
    [mail] = got
    assert mail.sender == "apsis@example.com"
    assert mail.recipients == ["ops+nightly@example.com"]
    assert mail.message["Subject"] == f"apsis: nightly {run_id} failure"
    body = mail.message.get_content()
    assert "day=2026-11-27" in body
    assert f"Run {run_id} of job nightly is failure." in body
    assert sink.state.logins == ["apsis", "apsis"]  # one session per attempt
    assert "hunter2" not in server_log


def test_without_smtp_the_action_is_noted_as_skipped(tmp_path: Path) -> None:
    with running_server(tmp_path, JOBS) as server:
        run_id = server.schedule("nightly", {"day": "1"})
        server.wait_finished(run_id)
        wait_for(
            lambda: "email action skipped: no SMTP server is configured" in _log(server, run_id),
            5,
            "the skip note",
        )
