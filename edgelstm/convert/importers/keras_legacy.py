"""Legacy Keras 2 (tf-keras) HDF5 models, read without Keras.

Keras 2 saved whole models as HDF5: the model config is a JSON attribute ``model_config``
on the root, weights live under ``model_weights/<layer>/`` in the order listed by that
group's ``weight_names`` attribute. Keras 3 refuses many of these files (for example
``Unrecognized keyword arguments passed to LSTM: {'time_major': False}``); reading the file
ourselves with h5py sidesteps that and runs no code from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgelstm.errors import ModelFormatError
from edgelstm.model.network import Network
from .keras_layers import KerasLayer, build_network, layers_from_model_config


def load_keras2_hdf5(path: Path, window: int | None = None) -> Network:
    import h5py

    from .limits import read_dataset

    name = Path(path).name
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise ModelFormatError(f"{name}: damaged HDF5 file ({exc}); the file may be truncated") from None
    with handle:
        raw_config = handle.attrs.get("model_config")
        if raw_config is None:
            raise ModelFormatError(
                f"{name}: HDF5 file without a model_config attribute: a weights-only file, not a saved model"
            )
        if isinstance(raw_config, bytes):
            raw_config = raw_config.decode("utf-8")
        try:
            config = json.loads(raw_config)
        except json.JSONDecodeError as exc:
            raise ModelFormatError(f"{name}: model_config is not valid JSON ({exc})") from None
        version = _text(handle.attrs.get("keras_version", "2"))
        major = int(version.split(".")[0]) if version[:1].isdigit() else 2
        chain, declared = layers_from_model_config(config, keras_major=major, source_name=name)
        weights_root = handle.get("model_weights", handle)

        def read_weights(layer: KerasLayer) -> list:
            group = weights_root.get(layer.name)
            if group is None:
                raise ModelFormatError(f"{name}: {layer.where()}: no weights stored for this layer")
            try:
                return [read_dataset(group[_text(w)], name, f"{layer.where()}: weight {_text(w)}")
                        for w in group.attrs.get("weight_names", [])]
            except (KeyError, OSError, ValueError, TypeError) as exc:
                raise ModelFormatError(f"{name}: {layer.where()}: weights unreadable ({exc})") from None

        network = build_network(
            chain,
            read_weights,
            keras_major=major,  # Keras 3 can write this format too, and its hard_sigmoid differs
            source_format="keras2-hdf5",
            source_name=name,
            declared_features=declared,
            window=window,
        )
    network.notes.append(f"saved by Keras {version} (legacy HDF5)")
    return network


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
