"""`apsis certs init` and `apsis check-jobs`, which need no server."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from cli.main import main

pytestmark = pytest.mark.timeout(10)

FILES = ("ca.pem", "ca.key", "server.pem", "server.key")


def test_certs_init_writes_private_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "certs"
    assert main(["certs", "init", str(directory)]) == 0
    for name in FILES:
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((directory / "server.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    assert cert.issuer == ca.subject
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert "server.key" in capsys.readouterr().out


def test_certs_init_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["certs", "init", str(tmp_path)]) == 0
    before = {name: (tmp_path / name).read_bytes() for name in FILES}
    assert main(["certs", "init", str(tmp_path)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert {name: (tmp_path / name).read_bytes() for name in FILES} == before
    assert main(["certs", "init", str(tmp_path), "--force", "--host", "sched.example.com"]) == 0
    assert (tmp_path / "ca.key").read_bytes() != before["ca.key"]
    cert = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "sched.example.com" in names.get_values_for_type(x509.DNSName)


def test_certs_without_subcommand() -> None:
    assert main(["certs"]) == 2


def test_check_jobs_passes_through(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    # Whatever the checker says and returns, the CLI passes on unchanged.
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "bad.yaml").write_text("program: [not, a, program]\nschedule: 42\n")
    direct = subprocess.run(
        [sys.executable, "-m", "apsis_server.checkjobs", str(jobs)],
        capture_output=True,
        check=False,
    )
    assert main(["check-jobs", str(jobs)]) == direct.returncode
    captured = capsysbinary.readouterr()
    assert (captured.out, captured.err) == (direct.stdout, direct.stderr)


def test_check_jobs_with_calendars(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    # A job on a named holiday calendar checks only with the calendar directory.
    cals, jobs = tmp_path / "calendars", tmp_path / "jobs"
    cals.mkdir()
    jobs.mkdir()
    (cals / "nyse.yaml").write_text("holidays: [2027-01-01]\n")
    (jobs / "eod.yaml").write_text(
        "program: x\nschedule: {type: daily, daytime: '16:00', calendar: nyse}\n"
    )
    assert main(["check-jobs", str(jobs)]) == 1
    assert b"unknown calendar 'nyse'" in capsysbinary.readouterr().out
    assert main(["check-jobs", "--calendars", str(cals), str(jobs)]) == 0
    assert b"1 jobs loaded, 0 errors" in capsysbinary.readouterr().out
    (cals / "bad.yaml").write_text("holidays: [2027-02-30]\n")
    assert main(["check-jobs", str(jobs), "--calendars", str(cals)]) == 1
    assert b"bad.yaml: holidays[0]: expected a date" in capsysbinary.readouterr().out
