"""Reading an ONNX file safely: parsed with ``onnx`` only (never run), external weight files
only from beside the model (no ``..``, no absolute path, no symlink out, offsets within the file).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from edgelstm.errors import ModelFormatError


def _tensors_in_graph(graph):
    """Every TensorProto a graph holds: initializers, Constant/attribute tensors, subgraphs' too."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors_in_graph(attribute.g)
            for sub in attribute.graphs:
                yield from _tensors_in_graph(sub)


def _check_external_location(path: Path, tensor, base: Path) -> None:
    """Refuse external data outside the model's directory (``..``, absolute paths, symlinks out)."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    where = f"{path.name}: tensor '{tensor.name}' stores its data in external file {location!r}"
    if not isinstance(location, str) or not location:
        raise ModelFormatError(f"{where}: no readable location given")
    posix, windows = PurePosixPath(location), PureWindowsPath(location)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or location.startswith(("/", "\\")):
        raise ModelFormatError(f"{where}: absolute paths are refused; external data must sit beside the model")
    if ".." in posix.parts or ".." in windows.parts:
        raise ModelFormatError(f"{where}: paths with '..' are refused; external data must sit beside the model")
    target = (base / location).resolve()
    if target != base and base not in target.parents:
        raise ModelFormatError(f"{where}: resolves outside the model's directory; refused")
    if not target.is_file():
        raise ModelFormatError(f"{where}: no such file beside the model (copy it next to {path.name})")
    try:
        offset = int(info.get("offset", 0) or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise ModelFormatError(f"{where}: bad offset/length") from None
    size = target.stat().st_size
    if offset < 0 or offset > size or (length is not None and (length < 0 or offset + length > size)):
        raise ModelFormatError(f"{where}: offset/length beyond the end of {location} ({size} bytes); truncated?")


def read_model(path: Path):
    """Parse an ONNX file and load its external weights (only from beside it); never runs it."""
    import onnx
    from onnx import external_data_helper

    from ..limits import check_file_size

    path = Path(path)
    check_file_size(path, path.name)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError, OSError, ...: all mean "not a readable ONNX file"
        raise ModelFormatError(f"{path.name}: not a readable ONNX model ({type(exc).__name__}: {exc}); "
                               "the file may be truncated or damaged") from None
    if not model.ir_version or not model.HasField("graph") or not model.graph.node:
        raise ModelFormatError(f"{path.name}: not an ONNX model (no IR version or no graph nodes)")
    base = path.parent.resolve()
    external = [t for t in _tensors_in_graph(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]
    for tensor in external:
        _check_external_location(path, tensor, base)
    if external:
        try:
            external_data_helper.load_external_data_for_model(model, str(base))
        except Exception as exc:
            raise ModelFormatError(f"{path.name}: its external data cannot be read ({type(exc).__name__}: {exc})") from None
    return model


def external_data_files(path: Path) -> list:
    """The external data files (beside the model, checked as in :func:`read_model`) whose bytes
    are part of the model: the dynamo exporter's ``model.onnx.data``. The converter hashes them."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)  # read_model has parsed it successfully before
    base = path.parent.resolve()
    files = []
    for tensor in _tensors_in_graph(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            _check_external_location(path, tensor, base)
            location = {entry.key: entry.value for entry in tensor.external_data}["location"]
            if location not in files:
                files.append(location)
    return files
