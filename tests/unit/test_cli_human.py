"""Values in words for the CLI (cli/human.py): signals, sizes, programs, metadata."""

from __future__ import annotations

from typing import Any

import pytest

from cli import human


@pytest.mark.parametrize(
    ("value", "text"),
    [(15, "SIGTERM"), ("9", "SIGKILL"), ("SIGUSR1", "SIGUSR1"), (999, "999"), (None, "None")],
)
def test_signal_name(value: object, text: str) -> None:
    assert human.signal_name(value) == text


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (812, "812 B"),
        (1024, "1 KiB"),
        (10692 * 1024, "10.4 MiB"),
        (1.5 * 2**30, "1.5 GiB"),
    ],
)
def test_size(count: float, text: str) -> None:
    assert human.size(count) == text


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("signal", 2, "SIGINT"),
        ("signal", None, "-"),
        ("core_dump", False, "no"),
        ("exit_code", 3, "3"),
        ("output_length", 2048, "2 KiB"),
        ("elapsed", 0.00030399999999999996, "0.3 ms"),
        (
            "rusage",
            {"utime": 0.0012259999999999999, "stime": 0.0, "maxrss": 10692.0, "nvcsw": 4.0},
            "utime 1 ms, stime 0s, maxrss 10.4 MiB, nvcsw 4",
        ),
        ("ratio", 0.123456789, "0.1235"),
        ("host", "<b>db7</b>", "<b>db7</b>"),
    ],
)
def test_meta_value(key: str, value: Any, text: str) -> None:
    assert human.meta_value(key, value) == text


def test_program_in_words() -> None:
    program = {
        "type": "shell",
        "command": "echo report",
        "host": "db7",
        "timeout": {"duration": 600.0, "signal": 15},
        "stop": {"signal": 2, "grace_period": 90.0},
        "env": {"inherit": False, "vars": {"A": "1"}},
        "resources": {"memory": 512 * 2**20, "cpu": 0.5, "pids": 100},
    }
    assert human.program_fields(program) == [
        ("program", "echo report  (shell)"),
        ("host", "db7"),
        ("timeout", "after 10m, with SIGTERM"),
        ("stop with", "SIGINT, then SIGKILL after 1m 30s"),
        ("environment", "empty, with A=1"),
        ("resources", "memory 512 MiB, 0.5 CPU, 100 processes"),
    ]
    argv = {"type": "program", "argv": ["/bin/echo", "two words"], "timeout": 5.0}
    assert human.program_fields(argv) == [
        ("program", "/bin/echo 'two words'  (program)"),
        ("timeout", "after 5s"),
    ]
    assert human.program_fields({"type": "no-op", "duration": 2, "success": False}) == [
        ("program", "no-op: fails after 2s")
    ]
