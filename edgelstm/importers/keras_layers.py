"""Keras layer configs (Keras 2 or 3) lowered into the framework-neutral :class:`Network`.

Both Keras file formats come down to the same thing: a chain of layer configs (JSON) and,
per layer, its weight arrays in Keras' variable order. This module checks every layer of
the chain against what is supported *before* any weight is read, and refuses the whole
model on the first unsupported one: nothing is half-converted and no code from the file
is ever run (a Lambda's bytecode is never even decoded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import ModelFormatError, UnsupportedLayerError
from ..network import AffineLayer, DenseLayer, EmbeddingLayer, LSTMLayer, Network, fold_affine_layers

#: Layers that are the identity at inference time.
IDENTITY_LAYERS = ("Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization")
SUPPORTED_LAYERS = ("InputLayer", "Embedding (first layer)", "LSTM", "Dense", "TimeDistributed(Dense)", "BatchNormalization") + IDENTITY_LAYERS
#: Recurrent layers and wrappers a later version will convert.
NOT_YET_SUPPORTED = ("GRU", "Bidirectional", "SimpleRNN", "ConvLSTM1D", "RepeatVector", "Conv1D", "Masking")

_ACTIVATION_ALIASES = {"silu": "swish", None: "linear"}


@dataclass
class KerasLayer:
    """One layer of the chain as read from the file, weights not yet loaded."""

    position: int
    name: str
    class_name: str
    config: dict
    module: str | None = None
    registered_name: str | None = None

    def where(self) -> str:
        return f"layer {self.position} '{self.name}' ({self.class_name})"


def activation_name(value, keras_major: int, layer: KerasLayer, field: str) -> str:
    """Normalise a Keras activation (string or serialized dict) to a description name."""
    if isinstance(value, dict):
        config = value.get("config")
        value = config if isinstance(config, str) else (config or {}).get("name", value.get("class_name"))
    value = _ACTIVATION_ALIASES.get(value, value)
    if value == "hard_sigmoid" and keras_major < 3:
        return "hard_sigmoid_keras2"
    if not isinstance(value, str):
        raise UnsupportedLayerError(f"{layer.where()}: {field} {value!r} is not a built-in activation")
    return value


def check_supported(layers: list) -> None:
    """Refuse the model if any layer (or layer option) of the chain is unsupported."""
    for layer in layers:
        cls = layer.class_name
        if cls == "Lambda":
            raise UnsupportedLayerError(
                f"{layer.where()}: Lambda layers hold arbitrary Python code, which edgelstm never runs "
                f"or converts; replace it with supported layers ({', '.join(SUPPORTED_LAYERS)})"
            )
        if (layer.module and not layer.module.startswith("keras")) or ">" in str(layer.registered_name or ""):
            raise UnsupportedLayerError(
                f"{layer.where()}: custom layer (from module '{layer.module}') is not supported and its code "
                f"is never run; supported: {', '.join(SUPPORTED_LAYERS)}"
            )
        if cls in NOT_YET_SUPPORTED:
            raise UnsupportedLayerError(
                f"{layer.where()}: {cls} is not yet supported; supported: {', '.join(SUPPORTED_LAYERS)}"
            )
        if cls == "TimeDistributed":
            inner = layer.config.get("layer", {})
            if inner.get("class_name") != "Dense":
                raise UnsupportedLayerError(
                    f"{layer.where()}: TimeDistributed({inner.get('class_name')}) is not supported; "
                    "only TimeDistributed(Dense)"
                )
            continue
        if cls == "LSTM":
            cfg = layer.config
            for option, message in (
                ("stateful", "stateful=True LSTMs are not yet supported"),
                ("go_backwards", "go_backwards=True is not yet supported"),
                ("return_state", "return_state=True is not supported (the step model exposes state itself)"),
                ("time_major", "time_major=True is not supported"),
            ):
                if cfg.get(option):
                    raise UnsupportedLayerError(f"{layer.where()}: {message}")
            continue
        if cls == "BatchNormalization":
            axis = layer.config.get("axis", -1)
            axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
            if axis not in (-1, 2):
                raise UnsupportedLayerError(
                    f"{layer.where()}: BatchNormalization over axis {axis} is not supported; "
                    "only the feature axis (-1)"
                )
            continue
        if cls == "Embedding":
            if layer.config.get("mask_zero"):
                raise UnsupportedLayerError(f"{layer.where()}: mask_zero=True (masking) is not supported")
            continue
        if cls in ("InputLayer", "Dense") or cls in IDENTITY_LAYERS:
            continue
        raise UnsupportedLayerError(
            f"{layer.where()}: {cls} is not supported; supported: {', '.join(SUPPORTED_LAYERS)}"
        )


def build_network(
    layers: list,
    read_weights: Callable[[KerasLayer], list],
    keras_major: int,
    source_format: str,
    source_name: str,
    declared_features: list | None,
) -> Network:
    """Lower a checked chain into a validated :class:`Network`.

    ``read_weights(layer)`` returns the layer's arrays in Keras variable order.
    """
    check_supported(layers)
    lowered = []
    for layer in layers:
        cls = layer.class_name
        if cls == "InputLayer" or cls in IDENTITY_LAYERS:
            continue
        weights = [np.asarray(w, dtype=np.float32) for w in read_weights(layer)]
        cfg = layer.config
        try:
            if cls == "LSTM":
                units = int(cfg["units"])
                bias = weights[2] if cfg.get("use_bias", True) else np.zeros(4 * units, np.float32)
                lowered.append(
                    LSTMLayer(
                        name=layer.name,
                        kernel=weights[0],
                        recurrent_kernel=weights[1],
                        bias=bias,
                        activation=activation_name(cfg.get("activation", "tanh"), keras_major, layer, "activation"),
                        recurrent_activation=activation_name(
                            cfg.get("recurrent_activation", "sigmoid"), keras_major, layer, "recurrent_activation"
                        ),
                        return_sequences=bool(cfg.get("return_sequences", False)),
                    )
                )
                _check_shape(layer, "recurrent_kernel", weights[1], (units, 4 * units))
            elif cls in ("Dense", "TimeDistributed"):
                dense_cfg = cfg if cls == "Dense" else cfg["layer"]["config"]
                units = int(dense_cfg["units"])
                bias = weights[1] if dense_cfg.get("use_bias", True) else np.zeros(units, np.float32)
                lowered.append(
                    DenseLayer(
                        name=layer.name,
                        kernel=weights[0],
                        bias=bias,
                        activation=activation_name(dense_cfg.get("activation"), keras_major, layer, "activation"),
                    )
                )
            elif cls == "BatchNormalization":
                lowered.append(_batch_norm(layer, weights))
            elif cls == "Embedding":
                lowered.append(EmbeddingLayer(name=layer.name, table=weights[0]))
        except (IndexError, KeyError) as exc:
            raise ModelFormatError(
                f"{source_name}: {layer.where()}: weights or config incomplete ({exc!r} missing); "
                "the file may be truncated"
            ) from None
    lowered = fold_affine_layers(lowered)
    if not lowered:
        raise UnsupportedLayerError(f"{source_name}: the model has no layer with weights")
    token_model = isinstance(lowered[0], EmbeddingLayer)
    if declared_features is not None:
        rank = len(declared_features)
        if token_model and rank != 2:
            raise UnsupportedLayerError(f"{source_name}: an Embedding model takes (batch, time) token ids, not shape {tuple(declared_features)}")
        if not token_model and rank != 3:
            raise UnsupportedLayerError(
                f"model input has shape {tuple(declared_features)}; an LSTM model takes (batch, time, features)"
            )
    n_features = 1 if token_model else (
        int(declared_features[-1]) if declared_features and declared_features[-1] is not None else lowered[0].input_size
    )
    network = Network(n_features=n_features, layers=lowered, source_format=source_format, source_name=source_name)
    return network.validate()


def _check_shape(layer: KerasLayer, what: str, array: np.ndarray, expected: tuple) -> None:
    if tuple(array.shape) != expected:
        raise ModelFormatError(f"{layer.where()}: {what} has shape {array.shape}, expected {expected}")


def _batch_norm(layer: KerasLayer, weights: list) -> AffineLayer:
    cfg = layer.config
    weights = list(weights)
    size = weights[-1].shape[0]
    gamma = weights.pop(0) if cfg.get("scale", True) else np.ones(size, np.float32)
    beta = weights.pop(0) if cfg.get("center", True) else np.zeros(size, np.float32)
    mean, variance = weights[0], weights[1]
    scale = gamma.astype(np.float64) / np.sqrt(variance.astype(np.float64) + float(cfg.get("epsilon", 1e-3)))
    shift = beta.astype(np.float64) - mean.astype(np.float64) * scale
    return AffineLayer(name=layer.name, scale=scale.astype(np.float32), shift=shift.astype(np.float32))


def declared_input_shape(shape) -> list | None:
    """The model's declared input shape (checked against the first layer in :func:`build_network`)."""
    return None if shape is None else list(shape)


def chain_from_functional(layer_configs: list, keras_major: int, source_name: str) -> list:
    """Order the layers of a functional model as a chain, refusing branches and merges."""
    by_name = {cfg["config"]["name"] if "name" not in cfg else cfg["name"]: cfg for cfg in layer_configs}
    parents = {}
    for name, cfg in by_name.items():
        inbound = _inbound_names(cfg.get("inbound_nodes", []))
        if len(inbound) > 1:
            raise UnsupportedLayerError(
                f"{source_name}: layer '{name}' ({cfg['class_name']}) takes several inputs "
                f"({', '.join(inbound)}); only chains of layers are supported"
            )
        parents[name] = inbound[0] if inbound else None
    children = {}
    for name, parent in parents.items():
        if parent is not None:
            if parent in children:
                raise UnsupportedLayerError(
                    f"{source_name}: layer '{parent}' feeds several layers; only chains of layers are supported"
                )
            children[parent] = name
    roots = [name for name, parent in parents.items() if parent is None]
    if len(roots) != 1:
        raise UnsupportedLayerError(f"{source_name}: the model has {len(roots)} inputs; exactly one is supported")
    order, name = [], roots[0]
    while name is not None:
        order.append(by_name[name])
        name = children.get(name)
    if len(order) != len(by_name):
        raise UnsupportedLayerError(f"{source_name}: the layers do not form one chain")
    return order


def _inbound_names(nodes) -> list:
    names = []
    for node in nodes:
        if isinstance(node, dict):  # Keras 3: {"args": [keras_tensor, ...], "kwargs": {...}}
            for arg in node.get("args", []):
                for tensor in arg if isinstance(arg, list) else [arg]:
                    if isinstance(tensor, dict) and tensor.get("class_name") == "__keras_tensor__":
                        names.append(tensor["config"]["keras_history"][0])
        elif isinstance(node, list):  # Keras 2: [[name, node_index, tensor_index, kwargs], ...]
            for entry in node:
                if isinstance(entry, list) and entry and isinstance(entry[0], str):
                    names.append(entry[0])
    return names


def layers_from_model_config(model_config: dict, keras_major: int, source_name: str) -> tuple:
    """Return ``(chain of KerasLayer, declared input shape or None)`` from a model's JSON config."""
    cls = model_config.get("class_name")
    config = model_config.get("config") or {}
    if cls not in ("Sequential", "Functional", "Model"):
        raise UnsupportedLayerError(f"{source_name}: top-level object is a {cls}, not a Sequential or functional model")
    raw_layers = config.get("layers")
    if not isinstance(raw_layers, list):
        raise ModelFormatError(f"{source_name}: model config has no 'layers' list")
    if cls != "Sequential":
        raw_layers = chain_from_functional(raw_layers, keras_major, source_name)
    declared = None
    chain = []
    position = 0
    for raw in raw_layers:
        layer_cls = raw.get("class_name")
        layer_cfg = raw.get("config") or {}
        name = layer_cfg.get("name") or raw.get("name") or f"layer_{position}"
        if layer_cls in ("Sequential", "Functional", "Model"):
            raise UnsupportedLayerError(
                f"{source_name}: layer {position} '{name}' is a nested model ({layer_cls}); flatten it into one chain"
            )
        for key in ("batch_shape", "batch_input_shape"):
            if layer_cfg.get(key) is not None and declared is None:
                declared = declared_input_shape(layer_cfg[key])
        if declared is None and isinstance(raw.get("build_config"), dict) and position == 0:
            declared = declared_input_shape(raw["build_config"].get("input_shape"))
        chain.append(
            KerasLayer(
                position=position,
                name=name,
                class_name=layer_cls,
                config=layer_cfg,
                module=raw.get("module"),
                registered_name=raw.get("registered_name") if raw.get("registered_name") != layer_cls else None,
            )
        )
        position += 1
    return chain, declared
