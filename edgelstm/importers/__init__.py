"""Model import: a model file, recognised by its content, becomes a :class:`~edgelstm.network.Network`.

Formats are told apart by their first bytes, never by the file name: a Keras 2 HDF5 file
saved under a ``.keras`` name loads as what it is.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelFormatError
from ..network import Network

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"


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
        head = handle.read(8)
    if not head:
        raise ModelFormatError(f"{path.name}: empty file")
    if head.startswith(_HDF5_MAGIC):
        return "keras2-hdf5"
    if head.startswith(_ZIP_MAGIC):
        return "keras3"
    if path.suffix == ".onnx":
        return "onnx"
    raise ModelFormatError(
        f"{path.name}: unknown model format (first bytes {head[:8]!r}); expected a Keras 3 .keras archive "
        "or a Keras 2 HDF5 file"
    )


def load_network(path) -> Network:
    """Import a model file into a validated Network."""
    path = Path(path)
    kind = sniff_format(path)
    if kind == "keras2-hdf5":
        from .keras_legacy import load_keras2_hdf5

        return load_keras2_hdf5(path)
    if kind == "keras3":
        from .keras3 import load_keras3_archive

        return load_keras3_archive(path)
    raise ModelFormatError(f"{path.name}: ONNX import is not yet supported")

