"""Model import: a model file, recognised by its content, becomes a :class:`~edgelstm.model.network.Network`.

Formats are told apart by their first bytes, never by the file name: a Keras 2 HDF5 file
saved under a ``.keras`` name loads as what it is.
"""

from __future__ import annotations

from pathlib import Path

from edgelstm.errors import ModelFormatError
from edgelstm.model.network import Network

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"
#: First bytes of the ModelProto fields that can follow ir_version: producer_name, producer_version,
#: domain, model_version, doc_string, graph, opset_import, metadata_props, training_info, functions.
_ONNX_NEXT_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2, 0xCA}


def _looks_like_onnx(head: bytes) -> bool:
    """An ONNX ModelProto starts with field 1 (ir_version, a small varint), then another ModelProto field."""
    if len(head) < 3 or head[0] != 0x08 or not 1 <= head[1] <= 0x7F:
        return False
    return head[2] in _ONNX_NEXT_TAGS


def sniff_format(path: Path) -> str:
    """Return ``"keras3"``, ``"keras2-hdf5"`` or ``"onnx"`` from the file's content."""
    path = Path(path)
    if not path.exists():
        raise ModelFormatError(f"{path}: no such file")
    if path.is_dir():
        raise ModelFormatError(
            f"{path}: is a directory; TensorFlow SavedModel directories are not supported, save a .keras file"
        )
    with open(path, "rb") as handle:
        head = handle.read(16)
    if not head:
        raise ModelFormatError(f"{path.name}: empty file")
    if head.startswith(_HDF5_MAGIC):
        return "keras2-hdf5"
    if head.startswith(_ZIP_MAGIC):
        return "keras3"
    if _looks_like_onnx(head) or path.suffix == ".onnx":
        return "onnx"
    raise ModelFormatError(
        f"{path.name}: unknown model format (first bytes {head[:8]!r}); expected a Keras 3 .keras archive, "
        "a Keras 2 HDF5 file or an ONNX model"
    )


def load_network(path, window: int | None = None) -> Network:
    """Import a model file into a validated Network.

    ``window``: the window length for window networks (Bidirectional, autoencoders, Conv1D,
    go_backwards) whose file does not fix it. A Keras model that declares another length is
    refused; an ONNX graph's fixed time dimension (often just the export's example input) is
    overridden, with a note."""
    path = Path(path)
    kind = sniff_format(path)
    if kind == "keras2-hdf5":
        from .keras_legacy import load_keras2_hdf5

        return load_keras2_hdf5(path, window=window)
    if kind == "keras3":
        from .keras3 import load_keras3_archive

        return load_keras3_archive(path, window=window)
    from .onnx_import import load_onnx

    return load_onnx(path, window=window)

