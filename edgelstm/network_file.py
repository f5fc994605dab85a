"""A Network saved as plain arrays (``network.npz``) plus its JSON description.

The bundle carries the float network so the runtime's numpy backend (and the profiler's
reference row) can run without any framework. ``.npz`` of numeric arrays, loaded with
``allow_pickle=False``: loading never executes code.
"""

from __future__ import annotations

import numpy as np

from .errors import BundleError
from .network import DenseLayer, EmbeddingLayer, LSTMLayer, Network


def save_network(network: Network, path) -> None:
    arrays = {}
    for index, layer in enumerate(network.layers):
        if isinstance(layer, EmbeddingLayer):
            arrays[f"{index}.table"] = layer.table
            continue
        arrays[f"{index}.kernel"] = layer.kernel
        arrays[f"{index}.bias"] = layer.bias
        if isinstance(layer, LSTMLayer):
            arrays[f"{index}.recurrent_kernel"] = layer.recurrent_kernel
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def load_network_file(path, description: dict) -> Network:
    """Rebuild the Network from ``network.npz`` and the manifest's ``network`` description."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            weights = {key: arrays[key] for key in arrays.files}
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable network weights ({exc})") from None
    layers = []
    try:
        for index, spec in enumerate(description["layers"]):
            if spec["kind"] == "lstm":
                layers.append(
                    LSTMLayer(
                        name=spec["name"],
                        kernel=weights[f"{index}.kernel"],
                        recurrent_kernel=weights[f"{index}.recurrent_kernel"],
                        bias=weights[f"{index}.bias"],
                        activation=spec["activation"],
                        recurrent_activation=spec["recurrent_activation"],
                        return_sequences=spec["return_sequences"],
                    )
                )
            elif spec["kind"] == "embedding":
                layers.append(EmbeddingLayer(spec["name"], weights[f"{index}.table"]))
            elif spec["kind"] == "dense":
                layers.append(DenseLayer(spec["name"], weights[f"{index}.kernel"], weights[f"{index}.bias"], spec["activation"]))
            else:
                raise BundleError(f"{path}: layer {index} has unknown kind {spec['kind']!r}")
    except KeyError as exc:
        raise BundleError(f"{path}: weights or description incomplete ({exc} missing)") from None
    return Network(int(description["n_features"]), layers, source_format="bundle").validate()
