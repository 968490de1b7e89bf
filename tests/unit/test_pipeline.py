"""The one pipeline: every path's ``ml_info`` has the contract's keys, only
``pipeline/finish.py`` writes one, and the remote fallback at the unit tier (a refused
connection on loopback: no server process needed)."""

from __future__ import annotations

import ast
import socket
from pathlib import Path

import numpy as np
import pytest

from mlsignal.enhancer import MLSignalEnhancer
from mlsignal.pipeline import (
    ML_INFO_KEYS,
    SignalRequest,
    annotate,
    finish,
    from_server,
    prepare,
)

SRC = Path(__file__).resolve().parents[2] / "src" / "mlsignal"
FINISH = SRC / "pipeline" / "finish.py"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed when we return: connections are refused


def _writes_ml_info(tree: ast.AST) -> list[int]:
    """Lines that set a key of an ``ml_info``/``info`` dict, or update one."""
    lines = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for t in targets:
            if isinstance(t, ast.Subscript) and _is_info(t.value):
                lines.append(node.lineno)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("update", "setdefault", "pop")
            and _is_info(node.func.value)
        ):
            lines.append(node.lineno)
    return lines


def _is_info(node: ast.AST) -> bool:
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return name in ("ml_info", "info")


def test_only_finish_writes_ml_info():
    offenders = {}
    for path in SRC.rglob("*.py"):
        if path == FINISH:
            continue
        lines = _writes_ml_info(ast.parse(path.read_text(encoding="utf-8")))
        if lines:
            offenders[str(path.relative_to(SRC))] = lines
    assert offenders == {}, f"ml_info written outside pipeline/finish.py: {offenders}"
    assert _writes_ml_info(ast.parse(FINISH.read_text(encoding="utf-8")))  # the scan can see


def test_local_and_rules_results_carry_exactly_the_contract_keys(local, sp500_bars):
    _, _, info = local.enhance_signal(sp500_bars.iloc[-300:], 30, 60)
    assert list(info) == list(ML_INFO_KEYS)
    assert (info["source"], info["endpoint"], info["attempts"]) == ("local", None, 0)
    assert info["fallback_reason"] is None
    p = prepare(local.bundle, SignalRequest("X", sp500_bars.iloc[-300:], 30, 60))
    rules = finish(local.bundle, p, None, device="none", backend="none", latency_ms=1.0)
    assert list(rules.ml_info) == list(ML_INFO_KEYS) and rules.ml_info["source"] == "rules"
    assert (rules.enhanced_ss, rules.enhanced_bs) == (30, 60)
    assert rules.ml_info["bull_prob"] == rules.ml_info["base_rate"]  # no information


def test_annotate_and_from_server_keep_to_the_contract(local, sp500_bars):
    p = prepare(local.bundle, SignalRequest("X", sp500_bars.iloc[-300:], 30, 60))
    r = finish(local.bundle, p, np.array([0.4, 0.6, 0.55], np.float32), device="cpu",
               backend="onnx", latency_ms=1.0)  # fmt: skip
    remote = annotate(r, source="remote", endpoint="http://gpu:8000", attempts=2, protocol="v2")
    assert remote.ml_info["source"] == "remote" and remote.ml_info["attempts"] == 2
    assert r.ml_info["source"] == "local"  # a new dict: the original is unchanged
    with pytest.raises(ValueError, match="not ml_info keys"):
        annotate(r, colour="red")
    with pytest.raises(ValueError, match="source 'gpu'"):
        annotate(r, source="gpu")
    doc = {"symbol": "X", "enhanced_ss": r.enhanced_ss, "enhanced_bs": r.enhanced_bs,
           "ml_info": {**r.ml_info, "debug": 1}}  # fmt: skip
    assert from_server(doc).ml_info == r.ml_info  # unknown keys dropped
    del doc["ml_info"]["bull_prob"]
    with pytest.raises(ValueError, match="lacks bull_prob"):
        from_server(doc)


def test_a_refused_connection_falls_back_to_the_exact_local_answer(tiny_bundle, local, sp500_bars):
    url = f"http://127.0.0.1:{_closed_port()}"
    remote = MLSignalEnhancer(tiny_bundle, remote_urls=[url], timeout_s=2.0)
    bars = sp500_bars.iloc[-300:]
    want_ss, want_bs, want = local.enhance_signal(bars, 30, 60)
    reasons = []
    try:
        for _ in range(5):
            ess, ebs, info = remote.enhance_signal(bars, 30, 60)
            assert (ess, ebs) == (want_ss, want_bs)
            assert info["bull_prob"] == want["bull_prob"] and info["kelly"] == want["kelly"]
            assert info["source"] == "fallback" and list(info) == list(ML_INFO_KEYS)
            reasons.append((info["fallback_reason"], info["attempts"]))
    finally:
        remote.close()
    assert url in reasons[0][0] and reasons[0][1] >= 1
    # three refused calls open the circuit: later calls fall back without any I/O
    assert reasons[-1] == (f"circuit open for every endpoint: {url}", 0)


def test_without_a_local_fallback_the_rule_scores_go_through(tiny_bundle, sp500_bars):
    url = f"http://127.0.0.1:{_closed_port()}"
    remote = MLSignalEnhancer(tiny_bundle, remote_urls=[url], local_fallback="off")
    try:
        ess, ebs, info = remote.enhance_signal(sp500_bars.iloc[-300:], 30, 60)
    finally:
        remote.close()
    assert (ess, ebs) == (30, 60) and info["source"] == "rules"
    assert info["fallback_reason"].endswith("; local fallback is off")
    assert info["bull_prob"] == info["base_rate"] and info["kelly"] == 0.0
    assert list(info) == list(ML_INFO_KEYS)
