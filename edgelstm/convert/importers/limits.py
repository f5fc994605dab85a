"""How much a model file may make the importer read: limits checked before reading.

A ``.keras`` archive member is read only after its declared uncompressed size is checked,
and then streamed with a cap (a zip whose header lies is stopped at the cap); an HDF5 dataset
is read only after its declared shape times its item size is checked. A 3 GiB zip bomb or a
weight declared 200000 x 200000 is a :class:`~edgelstm.errors.ModelFormatError` naming the
member or dataset at once, not a ``MemoryError`` a minute later.

Limits (bytes), overridable with environment variables for the rare model that needs more:

- ``EDGELSTM_MAX_MODEL_BYTES`` (default 2 GiB): one archive member, one weight array, an
  ONNX file. An LSTM of 1024 units with 1024 inputs holds 32 MiB of float32 weights.
- ``EDGELSTM_MAX_CONFIG_BYTES`` (default 64 MiB): a model's JSON configuration.
"""

from __future__ import annotations

import os

import numpy as np

from edgelstm.errors import ModelFormatError

DEFAULT_MAX_MODEL_BYTES = 2 << 30
DEFAULT_MAX_CONFIG_BYTES = 64 << 20


def _limit(variable: str, default: int) -> int:
    text = os.environ.get(variable)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ModelFormatError(f"{variable}={text!r}: not a number of bytes") from None
    if value <= 0:
        raise ModelFormatError(f"{variable}={text!r}: must be positive")
    return value


def max_model_bytes() -> int:
    return _limit("EDGELSTM_MAX_MODEL_BYTES", DEFAULT_MAX_MODEL_BYTES)


def max_config_bytes() -> int:
    return _limit("EDGELSTM_MAX_CONFIG_BYTES", DEFAULT_MAX_CONFIG_BYTES)


def _too_big(source: str, what: str, size: int, limit: int, variable: str) -> ModelFormatError:
    return ModelFormatError(f"{source}: {what} is {size} bytes, more than the limit of {limit} "
                            f"(raise it with {variable} if the model really is this large)")


def read_member(archive, member: str, source: str, limit: int | None = None, variable: str = "EDGELSTM_MAX_MODEL_BYTES") -> bytes:
    """One archive member, its declared size checked first and the read capped."""
    limit = max_model_bytes() if limit is None else limit
    info = archive.getinfo(member)
    if info.file_size > limit:
        raise _too_big(source, f"{member} (declared uncompressed size)", info.file_size, limit, variable)
    with archive.open(info) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise _too_big(source, f"{member} (uncompressed, more than its header declares)", len(data), limit, variable)
    return data


def read_config(archive, member: str, source: str) -> bytes:
    return read_member(archive, member, source, max_config_bytes(), "EDGELSTM_MAX_CONFIG_BYTES")


def read_dataset(dataset, source: str, where: str) -> np.ndarray:
    """An HDF5 dataset as an array, its declared size checked first."""
    limit = max_model_bytes()
    try:
        count = int(np.prod([int(d) for d in dataset.shape], dtype=np.float64))
        size = count * int(dataset.dtype.itemsize)
    except (TypeError, ValueError, AttributeError):
        raise ModelFormatError(f"{source}: {where}: not an array dataset") from None
    if size > limit:
        raise _too_big(source, f"{where} (declared shape {tuple(dataset.shape)})", size, limit, "EDGELSTM_MAX_MODEL_BYTES")
    return np.asarray(dataset[()])


def check_file_size(path, source: str) -> None:
    limit = max_model_bytes()
    size = os.stat(path).st_size
    if size > limit:
        raise _too_big(source, "the file", size, limit, "EDGELSTM_MAX_MODEL_BYTES")
