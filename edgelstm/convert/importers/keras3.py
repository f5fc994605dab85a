"""Keras 3 ``.keras`` archives, read without Keras.

A ``.keras`` file is a zip holding ``config.json`` (the model as JSON), ``metadata.json``
and ``model.weights.h5``. Reading those directly (zipfile, json, h5py) instead of calling
``keras.saving.load_model`` means no layer class is ever instantiated and no code from the
file can run, and it works on a machine without TensorFlow.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from edgelstm.errors import ModelFormatError
from edgelstm.model.network import Network
from .keras_layers import KerasLayer, build_network, layers_from_model_config
from .limits import read_config, read_dataset, read_member


def load_keras3_archive(path: Path, window: int | None = None) -> Network:
    name = Path(path).name
    try:
        with zipfile.ZipFile(path) as archive:
            members = set(archive.namelist())
            if "config.json" not in members:
                raise ModelFormatError(f"{name}: zip archive without config.json; not a Keras 3 model archive")
            config = json.loads(read_config(archive, "config.json", name))
            metadata = json.loads(read_config(archive, "metadata.json", name)) if "metadata.json" in members else {}
            if "model.weights.h5" not in members:
                raise ModelFormatError(f"{name}: archive has no model.weights.h5 (weights missing)")
            weights_bytes = read_member(archive, "model.weights.h5", name)
    except zipfile.BadZipFile as exc:
        raise ModelFormatError(f"{name}: damaged zip archive ({exc}); the file may be truncated") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{name}: config.json is not valid JSON ({exc})") from None
    except (OSError, EOFError, zipfile.LargeZipFile, NotImplementedError, RuntimeError) as exc:
        raise ModelFormatError(f"{name}: cannot read archive ({exc})") from None
    except RecursionError:
        raise ModelFormatError(f"{name}: config.json is nested too deeply to be a model") from None
    if not isinstance(config, dict) or not isinstance(metadata, dict):
        raise ModelFormatError(f"{name}: config.json and metadata.json must hold JSON objects")

    version = str(metadata.get("keras_version", "3"))
    chain, declared = layers_from_model_config(config, keras_major=3, source_name=name)

    import h5py

    try:
        weights_file = h5py.File(io.BytesIO(weights_bytes), "r")
    except (OSError, OverflowError, ValueError, RuntimeError) as exc:  # h5py's errors on a damaged file
        raise ModelFormatError(f"{name}: model.weights.h5 is damaged ({exc})") from None
    with weights_file:
        try:
            groups = _groups_by_layer_name(weights_file)
        except (OSError, OverflowError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelFormatError(f"{name}: model.weights.h5 is damaged ({exc})") from None

        def read_weights(layer: KerasLayer) -> list:
            group = groups.get(layer.name)
            if group is None:
                raise ModelFormatError(f"{name}: {layer.where()}: no weights stored for this layer")
            try:
                return [np.asarray(array) for array in _variables(group, name, layer.where())]
            except (OSError, KeyError, ValueError, TypeError) as exc:
                raise ModelFormatError(f"{name}: {layer.where()}: weights unreadable ({exc})") from None

        network = build_network(
            chain, read_weights, keras_major=3, source_format="keras3", source_name=name, declared_features=declared, window=window
        )
    network.notes.append(f"saved by Keras {version}")
    return network


def _groups_by_layer_name(weights_file) -> dict:
    """Map layer name -> its h5 group; Keras 3 keys groups by class, the name is an attribute."""
    groups = {}
    layers = weights_file.get("layers")
    if layers is None:
        raise ModelFormatError("model.weights.h5 has no 'layers' group")
    for key in layers:
        group = layers[key]
        own_vars = group.get("vars")
        layer_name = own_vars.attrs.get("name") if own_vars is not None else None
        if isinstance(layer_name, bytes):
            layer_name = layer_name.decode()
        groups[layer_name or key] = group
    return groups


def _variables(group, source: str = "", where: str = "") -> list:
    """The layer's arrays in Keras order: its own ``vars/0..n``, then each sub-object's (each
    array's declared size checked before it is read)."""
    arrays = []
    own = group.get("vars")
    if own is not None:
        arrays += [read_dataset(own[key], source, f"{where}: weight {key}") for key in sorted(own, key=int)]
    # a Bidirectional holds forward_layer and backward_layer: forward first, as Keras lists them
    for key in sorted(group, key=lambda k: (k == "backward_layer", k)):
        if key != "vars" and hasattr(group[key], "keys"):
            arrays += _variables(group[key], source, where)
    return arrays
