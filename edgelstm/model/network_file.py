"""A Network saved as plain arrays (``network.npz``) plus its JSON description.

The bundle carries the float network so the runtime's numpy backend (and the profiler's
reference row) can run without any framework. ``.npz`` of numeric arrays, loaded with
``allow_pickle=False``: loading never executes code.
"""

from __future__ import annotations

import numpy as np

from edgelstm.errors import BundleError
from .network import (
    MULTI_HEAD_ARRAYS, ActivationLayer, AttentionLayer, BidirectionalLayer, Conv1DLayer, DenseLayer,
    EmbeddingLayer, FlattenLayer, GRULayer, LSTMLayer, LayerNormLayer, MergeLayer,
    MultiHeadAttentionLayer, Network, OutputsLayer, Pooling1DLayer, RepeatVectorLayer, TimestepLayer,
)

_ARRAYS = {
    "lstm": ("kernel", "recurrent_kernel", "bias"),
    "gru": ("kernel", "recurrent_kernel", "bias", "recurrent_bias"),
    "dense": ("kernel", "bias"),
    "conv1d": ("kernel", "bias"),
    "embedding": ("table",),
    "layer_norm": ("gamma", "beta"),
    "multi_head_attention": MULTI_HEAD_ARRAYS,
}


def _save_layer(arrays: dict, prefix: str, layer) -> None:
    if isinstance(layer, BidirectionalLayer):
        _save_layer(arrays, f"{prefix}.forward", layer.forward)
        _save_layer(arrays, f"{prefix}.backward", layer.backward)
        return
    for attr in _ARRAYS.get(layer.kind, ()):
        arrays[f"{prefix}.{attr}"] = getattr(layer, attr)
    if layer.kind == "attention" and layer.scales is not None:  # additive attention's learned scales
        arrays[f"{prefix}.scales"] = np.asarray(layer.scales, np.float32)


def save_network(network: Network, path) -> None:
    arrays = {}
    for index, layer in enumerate(network.layers):
        _save_layer(arrays, str(index), layer)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _load_layer(weights: dict, prefix: str, spec: dict):
    kind = spec["kind"]
    w = lambda attr: weights[f"{prefix}.{attr}"]  # noqa: E731
    if kind == "lstm":
        return LSTMLayer(spec["name"], w("kernel"), w("recurrent_kernel"), w("bias"), spec["activation"],
                         spec["recurrent_activation"], spec["return_sequences"], spec.get("go_backwards", False))
    if kind == "gru":
        return GRULayer(spec["name"], w("kernel"), w("recurrent_kernel"), w("bias"), w("recurrent_bias"),
                        spec["activation"], spec["recurrent_activation"], spec["return_sequences"],
                        spec["reset_after"], spec.get("go_backwards", False))
    if kind == "bidirectional":
        return BidirectionalLayer(spec["name"], _load_layer(weights, f"{prefix}.forward", spec["forward"]),
                                  _load_layer(weights, f"{prefix}.backward", spec["backward"]), spec["merge_mode"])
    if kind == "embedding":
        return EmbeddingLayer(spec["name"], w("table"))
    if kind == "dense":
        return DenseLayer(spec["name"], w("kernel"), w("bias"), spec["activation"])
    if kind == "conv1d":
        return Conv1DLayer(spec["name"], w("kernel"), w("bias"), spec["strides"], spec["padding"], spec["dilation"],
                           spec["activation"])
    if kind == "repeat_vector":
        return RepeatVectorLayer(spec["name"], int(spec["times"]), int(spec["units"]))
    if kind == "timestep":
        return TimestepLayer(spec["name"], int(spec["index"]), int(spec["units"]))
    if kind == "attention":
        mode = spec.get("score_mode", "dot")
        if mode not in ("dot", "additive"):
            raise BundleError(f"layer '{spec.get('name')}': attention score_mode {mode!r} is not dot or additive")
        scales = w("scales") if f"{prefix}.scales" in weights else None
        return AttentionLayer(spec["name"], tuple(int(size) for size in spec["sizes"]), float(spec["scale"]),
                              bool(spec["causal"]), mode, scales)
    if kind == "multi_head_attention":
        return MultiHeadAttentionLayer(spec["name"], *(w(attr) for attr in MULTI_HEAD_ARRAYS), causal=bool(spec["causal"]))
    if kind == "flatten":
        return FlattenLayer(spec["name"], int(spec["steps"]), int(spec["units"]) // max(1, int(spec["steps"])))
    if kind == "outputs":
        return OutputsLayer(spec["name"], tuple(str(h) for h in spec["heads"]), tuple(int(size) for size in spec["sizes"]),
                            tuple(float(scale) for scale in spec["scales"]))
    if kind == "merge":
        return MergeLayer(spec["name"], spec["mode"], tuple(int(size) for size in spec["sizes"]))
    if kind == "layer_norm":
        return LayerNormLayer(spec["name"], w("gamma"), w("beta"), float(spec["epsilon"]))
    if kind == "activation":
        return ActivationLayer(spec["name"], spec["activation"], int(spec["units"]))
    if kind == "pooling1d":
        return Pooling1DLayer(spec["name"], spec["mode"], int(spec["pool_size"]), int(spec["strides"]), int(spec["units"]))
    raise BundleError(f"layer '{spec.get('name')}' has unknown kind {kind!r}")


def load_network_file(path, description: dict) -> Network:
    """Rebuild the Network from ``network.npz`` and the manifest's ``network`` description."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            weights = {key: arrays[key] for key in arrays.files}
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable network weights ({exc})") from None
    try:
        layers = [_load_layer(weights, str(index), spec) for index, spec in enumerate(description["layers"])]
        wiring = {spec["name"]: tuple(str(name) for name in spec["inputs"])
                  for spec in description["layers"] if spec.get("inputs")} or None
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: weights or description incomplete ({exc} missing)") from None
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from None
    return Network(int(description["n_features"]), layers, source_format="bundle",
                   window=description.get("window"), wiring=wiring).validate()
