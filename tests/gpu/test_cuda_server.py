"""The server on CUDA: remote results equal in-process CUDA results, number for number."""

from __future__ import annotations

import httpx
import pytest
import torch

from mlsignal.enhancer import MLSignalEnhancer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_remote_on_cuda_equals_local_on_cuda(tiny_bundle, server_factory, sp500_bars):
    server = server_factory(tiny_bundle, "--device", "cuda").start()
    remote = MLSignalEnhancer(tiny_bundle, remote_urls=[server.url], timeout_s=5.0)
    local = MLSignalEnhancer(tiny_bundle, device="cuda")
    for end in range(len(sp500_bars) - 20, len(sp500_bars)):
        bars = sp500_bars.iloc[end - 256 : end]
        r_ss, r_bs, r = remote.enhance_signal(bars, 30.0, 60.0)
        l_ss, l_bs, m = local.enhance_signal(bars, 30.0, 60.0)
        # the default protocol sends the host's windows as binary V2: the server runs the
        # model only (its device is in /v1/models, checked below)
        assert r["source"] == "remote" and r["protocol"] == "v2-binary"
        assert (r_ss, r_bs) == (l_ss, l_bs)
        for key in ("bull_prob", "p_lstm", "p_tft", "regime_vol", "kelly"):
            assert r[key] == m[key], key
    remote.close()
    assert httpx.get(f"{server.url}/v1/models", timeout=10).json()["device"] == "cuda:0"
    assert server.stop() == 0
