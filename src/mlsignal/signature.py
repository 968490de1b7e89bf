"""The model's I/O contract, in one place: names, datatype, versions and platforms.

Every served form of the model (``/v1/predict``, the ``/v2`` routes, the ONNX graph, a Triton
model repository) and every client of it (the V2 client, benchmarks) speaks this contract:

- one input, :data:`INPUT_NAME`: raw feature windows ``(B, T, F)`` :data:`DATATYPE`;
- three outputs, :data:`OUTPUT_NAMES`, each ``(B,)``; a runtime returns them as the columns
  of one ``(B, 3)`` array, in this order;
- served as :data:`MODEL_NAME`; a Triton version is :func:`triton_version` of the bundle's
  contract hash.

A bottom layer: it imports nothing from mlsignal, so the torch-free client can use it.
"""

from __future__ import annotations

#: The served model's name (V2 routes, ``export-triton``'s default).
MODEL_NAME = "mlsignal"
#: The graph's input: raw feature windows ``(B, T, F)`` float32, dynamic batch.
INPUT_NAME = "windows"
#: The outputs, in the column order of every runtime's ``(B, 3)`` array.
OUTPUT_NAMES = ("p_lstm", "p_tft", "bull_prob")
#: The V2 datatype of the input and the outputs.
DATATYPE = "FP32"
#: Hex digits of the contract hash in a Triton version: 15 = 60 bits, a positive int64.
HASH_DIGITS = 15
#: V2 ``platform`` of the model per runtime backend (Triton's platform names).
PLATFORMS = {"torch": "pytorch_libtorch", "onnx": "onnxruntime_onnx"}


def triton_version(contract_hash: str) -> int:
    """The Triton version number of a contract hash: ``int(contract_hash[:15], 16)``."""
    return int(contract_hash[:HASH_DIGITS], 16)


def platform(backend: str) -> str:
    """The V2 platform name of a runtime ``backend`` (the backend itself if unknown)."""
    return PLATFORMS.get(backend, backend)
