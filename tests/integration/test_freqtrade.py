"""A real ``freqtrade backtesting`` of the example strategy on the built-in samples, offline.

freqtrade is installed from the package index into its own virtual environment, once, under
``.cache/`` in the repository (git-ignored; reused while ``pyproject.toml``'s ``freqtrade``
extra and the core dependencies stay the same). Without the package index the install fails
and the tests skip, saying so. mlsignal itself comes from this checkout (``PYTHONPATH``).

freqtrade loads the exchange's market list over the network at start-up even to backtest
candles on disk, and has no setting to skip it; ``examples/freqtrade/run_offline.py`` runs
freqtrade's unchanged command line with ccxt's ``load_markets`` given the sample pairs'
markets and every ccxt request refused, so nothing here reaches an exchange.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "freqtrade"
CACHE = ROOT / ".cache"
INSTALL_TIMEOUT_S = 1200
RUN_TIMEOUT_S = 600
#: The columns the adapter promises (issue 15).
PROMISED = {"bull_prob", "base_rate", "regime", "kelly", "enhanced_ss", "enhanced_bs"}

pytestmark = pytest.mark.slow


def _requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["freqtrade"]]


@pytest.fixture(scope="module")
def freqtrade_python() -> Path:
    """The python of a virtual environment with freqtrade and mlsignal's dependencies."""
    reqs = _requirements()
    key = hashlib.sha256("\n".join([sys.version, *reqs]).encode()).hexdigest()[:12]
    venv = CACHE / f"freqtrade-{key}"
    python = venv / "bin" / "python"
    CACHE.mkdir(exist_ok=True)
    with open(CACHE / "freqtrade.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install at a time (parallel runs wait)
        if not (venv / ".complete").exists():
            _install(venv, reqs)
    return python


def _install(venv: Path, reqs: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    try:
        run = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *reqs],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"installing freqtrade took over {INSTALL_TIMEOUT_S} s (slow package index?)")
    if run.returncode != 0:
        lines = (run.stderr or run.stdout).strip().splitlines()
        tail = " | ".join(([ln for ln in lines if "ERROR" in ln] or lines)[-2:])
        pytest.skip(f"freqtrade could not be installed from the package index: {tail}")
    (venv / ".complete").write_text("\n".join(reqs) + "\n")


def _run(python: Path, args: list[str], cwd: Path, bundle: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "MLSIGNAL_BUNDLE": str(bundle),
        "ML_INFERENCE_DEVICE": "cpu",
        "ML_INFERENCE_BACKEND": "onnx",
    }
    env.pop("GPU_INFERENCE_API_URL", None)
    return subprocess.run(
        [str(python), *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=RUN_TIMEOUT_S,
    )  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The samples as freqtrade's Feather files, written by the example's own script."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        from sample_data import write_samples
    finally:
        sys.path.remove(str(EXAMPLE))
    out = tmp_path_factory.mktemp("freqtrade") / "user_data" / "data" / "binance"
    write_samples(out)
    return out


def test_freqtrade_backtesting_runs_the_example_strategy_offline(
    freqtrade_python, data_dir, tiny_bundle
):
    user_data = data_dir.parents[1]
    args = [
        str(EXAMPLE / "run_offline.py"), "--markets", str(EXAMPLE / "markets.json"),
        "backtesting", "--config", str(EXAMPLE / "config.json"),
        "--strategy-path", str(EXAMPLE), "--strategy", "MLSignalStrategy",
        "--userdir", str(user_data), "--datadir", str(data_dir),
        "--timerange", "20080101-", "--export", "signals", "--cache", "none",
    ]  # fmt: skip
    run = _run(freqtrade_python, args, user_data.parent, tiny_bundle)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "refusing a network request" not in run.stdout + run.stderr
    report = _run(
        freqtrade_python,
        [str(ROOT / "tests" / "freqtrade_report.py"), str(user_data / "backtest_results"),
         str(data_dir), str(tiny_bundle)],
        user_data.parent,
        tiny_bundle,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    result = json.loads(report.stdout.strip().splitlines()[-1])
    assert result["strategy"] == "MLSignalStrategy"
    assert set(result["trades"]) == {"SP500/USDT", "NASDAQ/USDT"}
    assert all(n > 0 for n in result["trades"].values()), result["trades"]
    for columns in result["signal_columns"].values():
        assert set(columns) >= PROMISED, columns
    assert result["nan_bull_prob"] == 0  # the startup candles cover the model's history
    assert result["worst_diff"] <= 1e-9  # what freqtrade saw = enhance_signal, candle by candle


def test_dry_run_streams_the_numbers_of_the_backtest(freqtrade_python, data_dir, tiny_bundle):
    args = [
        str(ROOT / "tests" / "freqtrade_live.py"), str(EXAMPLE), str(EXAMPLE / "config.json"),
        str(data_dir / "SP500_USDT-1d.feather"), str(tiny_bundle),
    ]  # fmt: skip
    run = _run(freqtrade_python, args, data_dir, tiny_bundle)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["streamed"] == 11 and result["rescored"] == 2  # first frame, and the jump
    assert result["compared"] > 1000
    assert result["worst_diff"] <= 1e-9
