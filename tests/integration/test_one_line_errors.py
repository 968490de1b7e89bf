"""Real `mlsignal` processes: a bad setting, port or bundle is one stderr line and exit 2.

Never a traceback, never a silent hang, never "serving ..." followed by an exit.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time

import pytest

from bundle_helpers import DAMAGES
from server_process import free_port

pytestmark = pytest.mark.slow


def run_cli(*argv: str, timeout_s: float = 90.0) -> subprocess.CompletedProcess:
    """``python -m mlsignal.cli.main *argv`` (PYTHONPATH inherited), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "mlsignal.cli.main", *argv],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def one_line_exit_2(proc: subprocess.CompletedProcess, command: str) -> str:
    """The one error line of a run that must exit 2 with nothing else on stderr."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"mlsignal {command}: error: "), err
    return err


def test_a_key_file_that_is_not_utf8(tiny_bundle, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_bytes(b"\xff\xfe secret \x80\n")
    proc = run_cli("serve", "--bundle", str(tiny_bundle), "--api-key-file", str(keys))
    assert "is not UTF-8 text" in one_line_exit_2(proc, "serve")


def test_an_unknown_log_level(tiny_bundle):
    proc = run_cli("--log-level", "verbose", "serve", "--bundle", str(tiny_bundle))
    err = one_line_exit_2(proc, "serve")
    assert "--log-level 'verbose' is not a level" in err and "DEBUG" in err


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_a_port_out_of_range(tiny_bundle, port):
    # Today --port 99999 hangs silently: the timeout is the test's failure.
    t0 = time.monotonic()
    proc = run_cli("serve", "--bundle", str(tiny_bundle), "--port", port, timeout_s=60)
    assert f"--port must be a TCP port in 1..65535, got {port}" in one_line_exit_2(proc, "serve")
    assert time.monotonic() - t0 < 30


def test_a_port_in_use_is_refused_before_the_model_loads(tiny_bundle):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        proc = run_cli("serve", "--bundle", str(tiny_bundle), "--port", str(port))
    # Today: "serving http://127.0.0.1:PORT ..." is logged, then uvicorn exits 3.
    assert "serving" not in proc.stderr
    assert one_line_exit_2(proc, "serve").endswith(
        f"cannot listen on 127.0.0.1:{port}: Address already in use; "
        "another server is listening there"
    )


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_malformed_bundle_is_one_line_and_exit_2(tiny_bundle, tmp_path, damage):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    DAMAGES[damage](bundle)
    proc = run_cli("enhance", "--bundle", str(bundle), "--data", "sp500", "--device", "cpu")
    assert str(bundle) in one_line_exit_2(proc, "enhance")


def test_serve_refuses_a_malformed_bundle_in_one_line(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    DAMAGES["corrupt-golden"](bundle)
    proc = run_cli("serve", "--bundle", str(bundle), "--port", str(free_port()))
    assert "golden.npz cannot be read" in one_line_exit_2(proc, "serve")


def test_the_error_names_the_fix_for_a_format_1_bundle(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    DAMAGES["format-1"](bundle)
    err = one_line_exit_2(run_cli("enhance", "--bundle", str(bundle), "--data", "sp500"), "enhance")
    assert f"`mlsignal export-onnx --bundle {bundle}`" in err
