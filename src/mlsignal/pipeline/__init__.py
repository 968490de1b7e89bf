"""One enhancement in three steps, shared by every path (local, remote, server, Ray, live,
evaluate), each in one module:

1. :mod:`~mlsignal.pipeline.prepare`: bars (a DataFrame, wire arrays, or a symbol's
   :class:`~mlsignal.features.FeatureStream`) -> a :class:`Prepared`: validated, trimmed
   bars, resolved rule scores, and the model window (computed on first use).
2. forward: a runtime's ``predict`` on the stacked windows, in-process
   (:mod:`mlsignal.runtime`), on the server (:mod:`mlsignal.server.batcher`) or remote
   (:mod:`mlsignal.client`); not in this package.
3. :mod:`~mlsignal.pipeline.finish`: model outputs -> GARCH regime, Kelly, fusion and
   ``ml_info``. :func:`finish` is the only code that builds an ``ml_info``; :func:`annotate`
   the only code that changes one (source, endpoint, attempts, reason, latency).

Keeping both ends here is what makes a remote, streamed or served result equal a local one
number for number.
"""

from __future__ import annotations

from mlsignal.pipeline.finish import ML_INFO_KEYS, annotate, finish, from_server
from mlsignal.pipeline.prepare import (
    ArrayItem,
    check_score,
    prepare,
    prepare_arrays,
    prepare_many,
    prepare_rows,
    prepare_stream,
    regime_vol,
    with_regime_vols,
)
from mlsignal.pipeline.types import Prepared, SignalRequest, SignalResult

__all__ = [
    "ML_INFO_KEYS",
    "ArrayItem",
    "Prepared",
    "SignalRequest",
    "SignalResult",
    "annotate",
    "check_score",
    "finish",
    "from_server",
    "prepare",
    "prepare_arrays",
    "prepare_many",
    "prepare_rows",
    "prepare_stream",
    "regime_vol",
    "with_regime_vols",
]
