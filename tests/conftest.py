"""Shared fixtures: one tiny bundle trained by our own code, once per test session."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server_process import ServerProcess  # tests/ is on sys.path (rootdir conftest)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle: the `tiny` preset on the S&P 500 sample, trained on CPU (seed 0)."""
    from mlsignal.training.pipeline import train_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    train_bundle("sp500", out, preset="tiny", device="cpu", seed=0, progress=False)
    return out


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle that a test may damage."""
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


@pytest.fixture(scope="session")
def sp500_bars():
    """The real daily S&P 500 sample as canonical bars."""
    from mlsignal.data import load_sample

    return load_sample("sp500")


@pytest.fixture(scope="module")
def bars_stream(sp500_bars):
    """The last 40 bar windows of the S&P 500, as a live loop would see them."""
    n = 256
    return [sp500_bars.iloc[end - n : end] for end in range(len(sp500_bars) - 40, len(sp500_bars))]


@pytest.fixture(scope="module")
def local(tiny_bundle: Path):
    """A local CPU enhancer, the reference remote results are compared with."""
    from mlsignal.enhancer import MLSignalEnhancer

    return MLSignalEnhancer(tiny_bundle, device="cpu")


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Make :class:`ServerProcess` objects; any still running are killed at teardown."""
    made: list[ServerProcess] = []

    def make(bundle: Path, *extra_args: str, **kw: object) -> ServerProcess:
        kw.setdefault("log_dir", tmp_path)
        server = ServerProcess(bundle, *extra_args, **kw)  # type: ignore[arg-type]
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture(scope="session")
def server_class() -> type[ServerProcess]:
    """:class:`ServerProcess` itself, for module-scoped servers."""
    return ServerProcess


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """``(ca, cert, key)`` PEM files: a throwaway CA and a certificate for 127.0.0.1."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(paths[0]))
    cert.private_key_and_cert_chain_pem.write_to_path(str(paths[1]))
    cert.private_key_pem.write_to_path(str(paths[2]))
    return paths
