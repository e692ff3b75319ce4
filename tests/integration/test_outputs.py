"""Separate stdout and stderr end to end (spec/01-jobs.md `stderr`, 04-interfaces.md
`/output?name=`): a real server and its local agent, real programs, the REST API,
the run feed and the `apsis output` command.

The burst program writes pseudo-random bytes, stdout's from lowercase letters and
stderr's from capitals, in chunks of random sizes, alternating: each stream must
come back byte for byte, and the merged view must hold both, each in its order.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from cli.feeds import FeedClient, OutputAdded, RunFeed
from tests.harness import Server, running_server

pytestmark = pytest.mark.timeout(120)

LOWER = bytes(97 + b % 26 for b in range(256))
UPPER = bytes(65 + b % 26 for b in range(256))
BURST_SEED = 20261207
BURST_EACH = 10 * 2**20  # per stream: 20 MB in all

BURST = f"""
import os, random
rng = random.Random({BURST_SEED})
lower, upper = bytes({list(LOWER)}), bytes({list(UPPER)})
left = [{BURST_EACH}, {BURST_EACH}]
while any(left):
    for fd in (1, 2):
        size = min(left[fd - 1], rng.randint(1, 1 << 16))
        data = rng.randbytes(size).translate(lower if fd == 1 else upper)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        left[fd - 1] -= size
"""


def _expected() -> tuple[bytes, bytes]:
    """What the burst program writes to stdout and to stderr."""
    rng = random.Random(BURST_SEED)
    out, err = bytearray(), bytearray()
    left = [BURST_EACH, BURST_EACH]
    while any(left):
        for fd in (1, 2):
            size = min(left[fd - 1], rng.randint(1, 1 << 16))
            data = rng.randbytes(size).translate(LOWER if fd == 1 else UPPER)
            (out if fd == 1 else err).extend(data)
            left[fd - 1] -= size
    return bytes(out), bytes(err)


def _jobs(tmp_path: Path) -> dict[str, str]:
    script = tmp_path / "burst.py"
    script.write_text(BURST)
    return {
        "burst": f"program: {{type: program, argv: [{sys.executable}, {script}]}}\n",
        "both": (
            "program: {type: shell, command: 'echo out 1; echo err 1 >&2; sleep 0.3;"
            " echo out 2; echo err 2 >&2'}\n"
        ),
        "merged": (
            "program:\n  type: shell\n  stderr: merge\n"
            "  command: 'echo a; echo b >&2; echo c; echo d >&2'\n"
        ),
        "long": (
            "program: {type: shell, command: 'for i in $(seq 1 30); do echo out $i;"
            " echo err $i >&2; sleep 0.1; done'}\n"
        ),
    }


def _output(server: Server, run_id: str, name: str | None = None) -> bytes:
    params = {} if name is None else {"name": name}
    response = server.api("GET", f"/runs/{run_id}/output", params=params)
    assert response.status_code == 200, response.text
    assert int(response.headers["x-apsis-output-length"]) == len(response.content)
    return response.content


def test_a_20_mb_interleaved_burst_is_byte_exact_on_both_channels(tmp_path: Path) -> None:
    out, err = _expected()
    with running_server(tmp_path / "server", _jobs(tmp_path)) as server:
        run_id = server.schedule("burst")
        run = server.wait_finished(run_id, 90)
        assert run["state"] == "success", (run, server.log()[-3000:])
        assert _output(server, run_id, "stdout") == out
        assert _output(server, run_id, "stderr") == err
        merged = _output(server, run_id)
        assert _output(server, run_id, "merged") == merged
        assert len(merged) == len(out) + len(err)
        # Each stream's bytes, in order, make up the merged view.
        assert bytes(b for b in merged if b >= 97) == out
        assert bytes(b for b in merged if b < 97) == err
        switches = sum(1 for a, b in itertools.pairwise(merged) if (a < 97) != (b < 97))
        assert switches >= 2, "the merged view interleaves the streams"
        meta = server.meta(run_id)
        assert meta["output_length"] == len(out) and meta["stderr_length"] == len(err)
        # A range of one stream is that stream's bytes.
        part = server.api(
            "GET", f"/runs/{run_id}/output", params={"name": "stderr", "start": 5, "stop": 70_000}
        )
        assert part.content == err[5:70_000]


def test_streams_apart_by_default_and_merged_when_asked(tmp_path: Path) -> None:
    with running_server(tmp_path / "server", _jobs(tmp_path)) as server:
        apart, merged = server.schedule("both"), server.schedule("merged")
        for run_id in (apart, merged):
            assert server.wait_finished(run_id, 30)["state"] == "success"
        assert _output(server, apart, "stdout") == b"out 1\nout 2\n"
        assert _output(server, apart, "stderr") == b"err 1\nerr 2\n"
        # The agent read the first lines before the program wrote the last ones.
        assert _output(server, apart) == b"out 1\nerr 1\nout 2\nerr 2\n"
        assert server.get(f"/runs/{apart}")["program"]["stderr"] == "separate"
        # Merged: everything in stdout, in the order written, as the earlier Apsis did.
        assert _output(server, merged) == b"a\nb\nc\nd\n"
        assert _output(server, merged, "stdout") == b"a\nb\nc\nd\n"
        assert _output(server, merged, "stderr") == b""
        assert server.get(f"/runs/{merged}")["program"]["stderr"] == "merge"
        # A name that is not an output is refused, saying which are.
        for bad in ("STDERR", "output", "", "stdout\x00"):
            answer = server.api("GET", f"/runs/{apart}/output", params={"name": bad})
            assert answer.status_code == 400, (bad, answer.text)
            assert "merged, stdout, stderr" in answer.json()["error"], answer.text


def test_the_cli_writes_one_stream_or_both(tmp_path: Path) -> None:
    with running_server(tmp_path / "server", _jobs(tmp_path)) as server:
        apart, merged = server.schedule("both"), server.schedule("merged")
        for run_id in (apart, merged):
            server.wait_finished(run_id, 30)

        def apsis(*args: str) -> subprocess.CompletedProcess[bytes]:
            env = {k: v for k, v in os.environ.items() if not k.startswith("APSIS_")}
            argv = [sys.executable, "-m", "cli.main", "--server", server.url, *args]
            return subprocess.run(argv, capture_output=True, env=env, timeout=30, check=False)

        assert apsis("output", apart, "--stderr").stdout == b"err 1\nerr 2\n"
        assert apsis("output", apart, "--stdout").stdout == b"out 1\nout 2\n"
        assert apsis("output", apart).stdout == b"out 1\nerr 1\nout 2\nerr 2\n"
        assert apsis("output", apart, "--stderr", "--tail", "1").stdout == b"err 2\n"
        done = apsis("output", merged, "--stderr")
        assert done.returncode == 0 and done.stdout == b""
        assert b"merges its stderr into its stdout" in done.stderr, done.stderr
        both = apsis("output", apart, "--stderr", "--stdout")
        assert both.returncode != 0 and b"not allowed with" in both.stderr


def test_the_feed_follows_one_stream(tmp_path: Path) -> None:
    with running_server(tmp_path / "server", _jobs(tmp_path)) as server:
        run_id = server.schedule("long")
        feeds = FeedClient(server.url)
        got: dict[str, bytearray] = {}
        for name in ("stderr", "stdout"):
            data = got.setdefault(name, bytearray())
            for update in RunFeed(feeds, run_id, name=name):
                if isinstance(update, OutputAdded):
                    data += update.data
        expected = {
            name: "".join(f"{name[3:]} {i}\n" for i in range(1, 31)).encode()
            for name in ("stdout", "stderr")
        }
        assert bytes(got["stderr"]) == expected["stderr"]
        assert bytes(got["stdout"]) == expected["stdout"]
        # A bad name closes the feed at once, saying why.
        path = f"/api/v1/runs/{run_id}/updates"
        with feeds.open(path, {"name": "bogus"}) as ws, pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
        assert "merged, stdout, stderr" in closed.value.rcvd.reason


def test_a_server_killed_mid_run_keeps_both_streams_whole(tmp_path: Path) -> None:
    with running_server(tmp_path / "server", _jobs(tmp_path)) as server:
        run_id = server.schedule("long")
        server.wait_state(run_id, "running", 30)
        time.sleep(1.0)  # some of each stream stored
        # While it runs, its metadata says how much of each is stored so far.
        meta = server.meta(run_id)
        assert meta["output_length"] > 0 and meta["stderr_length"] > 0, meta
        server.kill()
        server.start()
        run = server.wait_finished(run_id, 60)
        assert run["state"] == "success", run
        stdout = "".join(f"out {i}\n" for i in range(1, 31)).encode()
        stderr = "".join(f"err {i}\n" for i in range(1, 31)).encode()
        assert _output(server, run_id, "stdout") == stdout
        assert _output(server, run_id, "stderr") == stderr
        merged = _output(server, run_id)
        assert sorted(merged.splitlines()) == sorted((stdout + stderr).splitlines())
        assert len(merged) == len(stdout) + len(stderr)
