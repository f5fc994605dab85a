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

from edgelstm.errors import ModelFormatError, UnsupportedLayerError
from .keras_old import merge_recurrent_weights, sequential_layers, upgrade_layer
from edgelstm.model.network import (AffineLayer, BidirectionalLayer, Conv1DLayer, DenseLayer, EmbeddingLayer, GRULayer, LSTMLayer,
                       Network, Pooling1DLayer, RepeatVectorLayer, TimestepLayer, fold_affine_layers)

#: Layers that are the identity at inference time.
IDENTITY_LAYERS = ("Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization")
SUPPORTED_LAYERS = ("InputLayer", "Embedding (first layer)", "LSTM", "GRU", "Bidirectional(LSTM|GRU)", "Dense",
                    "Activation (linear, or after a linear Dense)",
                    "TimeDistributed(Dense)", "RepeatVector", "Conv1D", "MaxPooling1D", "AveragePooling1D",
                    "GlobalAveragePooling1D", "GlobalMaxPooling1D",
                    "BatchNormalization") + IDENTITY_LAYERS
#: Layers a later version may convert.
NOT_YET_SUPPORTED = ("SimpleRNN", "ConvLSTM1D", "Masking")
RECURRENT_CLASSES = ("LSTM", "GRU")

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
        if cls in RECURRENT_CLASSES:
            _check_recurrent(layer, layer.config)
            continue
        if cls == "Bidirectional":
            for key in ("layer", "backward_layer"):
                inner = layer.config.get(key)
                if inner is None:
                    continue
                if inner.get("class_name") not in RECURRENT_CLASSES:
                    raise UnsupportedLayerError(
                        f"{layer.where()}: Bidirectional({inner.get('class_name')}) is not supported; only LSTM or GRU inside"
                    )
                _check_recurrent(layer, inner.get("config", {}))
            if layer.config.get("merge_mode", "concat") not in ("concat", "sum", "mul", "ave"):
                raise UnsupportedLayerError(
                    f"{layer.where()}: merge_mode {layer.config.get('merge_mode')!r} is not supported (concat, sum, mul, ave)"
                )
            continue
        if cls == "Conv1D":
            cfg = layer.config
            if cfg.get("data_format", "channels_last") != "channels_last" or int(cfg.get("groups", 1)) != 1:
                raise UnsupportedLayerError(f"{layer.where()}: only channels_last Conv1D without groups is supported")
            if cfg.get("padding", "valid") not in ("valid", "same", "causal"):
                raise UnsupportedLayerError(f"{layer.where()}: padding {cfg.get('padding')!r} is not supported")
            continue
        if cls in ("MaxPooling1D", "AveragePooling1D"):
            cfg = layer.config
            if cfg.get("padding", "valid") != "valid" or cfg.get("data_format", "channels_last") != "channels_last":
                raise UnsupportedLayerError(f"{layer.where()}: only padding='valid', channels_last pooling is supported")
            continue
        if cls == "RepeatVector":
            continue
        if cls in ("GlobalAveragePooling1D", "GlobalMaxPooling1D"):
            cfg = layer.config
            if cfg.get("data_format", "channels_last") != "channels_last" or cfg.get("keepdims"):
                raise UnsupportedLayerError(f"{layer.where()}: only channels_last, keepdims=False global pooling is supported")
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
        if cls in ("InputLayer", "Dense", "Activation") or cls in IDENTITY_LAYERS:
            continue
        raise UnsupportedLayerError(
            f"{layer.where()}: {cls} is not supported; supported: {', '.join(SUPPORTED_LAYERS)}"
        )


def _check_recurrent(layer: KerasLayer, cfg: dict) -> None:
    """Options of an LSTM or GRU (alone or inside Bidirectional) that have no step-model meaning."""
    for option, message in (
        ("return_state", "return_state=True is not supported (the step model exposes state itself)"),
        ("time_major", "time_major=True is not supported"),
    ):
        if cfg.get(option):
            raise UnsupportedLayerError(f"{layer.where()}: {message}")


def _one(value, default=1) -> int:
    """Keras stores Conv1D/pooling sizes as 1-element lists (Keras 3) or ints/tuples (Keras 2)."""
    if value is None:
        return default
    if isinstance(value, (list, tuple)):
        return int(value[0])
    return int(value)


def _recurrent(layer: KerasLayer, class_name: str, cfg: dict, weights: list, keras_major: int, name: str):
    """An LSTMLayer or GRULayer from a Keras config and its arrays (kernel, recurrent kernel, bias)."""
    units = int(cfg["units"])
    use_bias = cfg.get("use_bias", True)
    common = dict(
        activation=activation_name(cfg.get("activation", "tanh"), keras_major, layer, "activation"),
        recurrent_activation=activation_name(cfg.get("recurrent_activation", "sigmoid"), keras_major, layer,
                                             "recurrent_activation"),
        return_sequences=bool(cfg.get("return_sequences", False)),
        go_backwards=bool(cfg.get("go_backwards", False)),
    )
    if class_name == "GRU":
        # Keras before 2.1.? had no reset_after (and reset before the matrix); tf.keras defaults to
        # True: without the option, the bias says which (two rows: after)
        implied = weights[2].ndim == 2 if use_bias and len(weights) > 2 else True
        reset_after = bool(cfg.get("reset_after", implied))
        _check_shape(layer, "recurrent_kernel", weights[1], (units, 3 * units))
        if not use_bias:
            bias, recurrent_bias = np.zeros(3 * units, np.float32), np.zeros(3 * units, np.float32)
        elif reset_after:
            _check_shape(layer, "bias", weights[2], (2, 3 * units))
            bias, recurrent_bias = weights[2][0], weights[2][1]
        else:
            bias, recurrent_bias = weights[2], np.zeros(3 * units, np.float32)
        return GRULayer(name=name, kernel=weights[0], recurrent_kernel=weights[1], bias=bias,
                        recurrent_bias=recurrent_bias, reset_after=reset_after, **common)
    _check_shape(layer, "recurrent_kernel", weights[1], (units, 4 * units))
    bias = weights[2] if use_bias else np.zeros(4 * units, np.float32)
    return LSTMLayer(name=name, kernel=weights[0], recurrent_kernel=weights[1], bias=bias, **common)


def build_network(
    layers: list,
    read_weights: Callable[[KerasLayer], list],
    keras_major: int,
    source_format: str,
    source_name: str,
    declared_features: list | None,
    window: int | None = None,
) -> Network:
    """Lower a checked chain into a validated :class:`Network`.

    ``read_weights(layer)`` returns the layer's arrays in Keras variable order. A window
    network (Bidirectional, RepeatVector, Conv1D, go_backwards) takes its window length
    from ``window``, else from the model's declared input shape, else from its RepeatVector.
    """
    check_supported(layers)
    lowered, notes = [], []
    for layer in layers:
        cls = layer.class_name
        if cls == "InputLayer" or cls in IDENTITY_LAYERS:
            continue
        if cls == "Activation":
            lowered.append(_activation(layer, lowered, keras_major))
            continue
        weights = [np.asarray(w, dtype=np.float32) for w in read_weights(layer)]
        if cls in RECURRENT_CLASSES:
            weights = merge_recurrent_weights(cls, weights, keras_major)
        cfg = layer.config
        try:
            if cls in RECURRENT_CLASSES:
                lowered.append(_recurrent(layer, cls, cfg, weights, keras_major, layer.name))
                if cfg.get("stateful"):
                    notes.append(f"{layer.name}: stateful=True (batch size baked in for training); the step model "
                                 "carries state between calls itself, for any number of streams")
            elif cls == "Bidirectional":
                forward_cfg = cfg["layer"]["config"]
                backward_cfg = (cfg.get("backward_layer") or {}).get("config") or dict(forward_cfg, go_backwards=True)
                count = len(weights) // 2
                forward = _recurrent(layer, cfg["layer"]["class_name"], forward_cfg, weights[:count], keras_major,
                                     f"{layer.name}/forward")
                backward = _recurrent(layer, (cfg.get("backward_layer") or cfg["layer"])["class_name"], backward_cfg,
                                      weights[count:], keras_major, f"{layer.name}/backward")
                backward.go_backwards = not forward.go_backwards
                if (forward.kind, forward.units, forward.return_sequences) != (backward.kind, backward.units, backward.return_sequences):
                    raise UnsupportedLayerError(
                        f"{layer.where()}: its backward_layer differs from the forward layer ({backward.kind} "
                        f"{backward.units} units vs {forward.kind} {forward.units}); only mirror-image Bidirectional layers are supported"
                    )
                lowered.append(BidirectionalLayer(layer.name, forward, backward, cfg.get("merge_mode", "concat")))
            elif cls == "RepeatVector":
                size = lowered[-1].output_size if lowered else None
                lowered.append(RepeatVectorLayer(layer.name, int(cfg["n"]), int(size or 0)))
            elif cls == "Conv1D":
                filters = int(cfg["filters"])
                bias = weights[1] if cfg.get("use_bias", True) else np.zeros(filters, np.float32)
                lowered.append(Conv1DLayer(
                    layer.name, weights[0], bias, strides=_one(cfg.get("strides")), padding=cfg.get("padding", "valid"),
                    dilation=_one(cfg.get("dilation_rate")),
                    activation=activation_name(cfg.get("activation"), keras_major, layer, "activation"),
                ))
            elif cls in ("MaxPooling1D", "AveragePooling1D"):
                size = lowered[-1].output_size if lowered else declared_features[-1]
                pool = _one(cfg.get("pool_size"), 2)
                lowered.append(Pooling1DLayer(layer.name, "max" if cls.startswith("Max") else "average", pool,
                                              _one(cfg.get("strides"), pool), int(size)))
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
            elif cls in ("GlobalAveragePooling1D", "GlobalMaxPooling1D"):
                declared_length = declared_features[1] if declared_features and len(declared_features) >= 2 else None
                lowered.extend(_global_pooling(layer, [x for x in lowered if x is not None], window or declared_length,
                                               declared_features))
            elif cls == "BatchNormalization":
                lowered.append(_batch_norm(layer, weights))
            elif cls == "Embedding":
                lowered.append(EmbeddingLayer(name=layer.name, table=weights[0]))
        except (IndexError, KeyError) as exc:
            raise ModelFormatError(
                f"{source_name}: {layer.where()}: weights or config incomplete ({exc!r} missing); "
                "the file may be truncated"
            ) from None
    lowered = fold_affine_layers([layer for layer in lowered if layer is not None])
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
    network = Network(n_features=n_features, layers=lowered, source_format=source_format, source_name=source_name,
                      notes=notes)
    if network.mode == "window":  # (batch, T, features), or (batch, T) token ids
        declared_length = declared_features[1] if declared_features and len(declared_features) >= 2 else None
        if window and declared_length and int(window) != int(declared_length):
            raise UnsupportedLayerError(
                f"{source_name}: the model declares windows of {declared_length} steps; --window {window} contradicts it"
            )
        repeats = [layer.times for layer in lowered if isinstance(layer, RepeatVectorLayer)]
        network.window = window or declared_length or (repeats[0] if repeats else None)
    return network.validate()


def _global_pooling(layer: KerasLayer, lowered: list, window, declared_features) -> list:
    """Global average or max pooling over time as the window layers already lowered everywhere
    (numpy reference, TFLite and ONNX window graphs): one pooling window as long as the sequence
    at that point, then its one timestep (the sequence becomes a vector). Needs that length: the
    model's declared input length or ``--window``."""
    if not window:
        raise UnsupportedLayerError(
            f"{layer.where()}: global pooling needs a fixed window: a model with a declared input length "
            "(keras.Input((T, features))) or edgelstm convert --window T")
    length = int(window)
    for previous in lowered:
        if isinstance(previous, (LSTMLayer, GRULayer, BidirectionalLayer)) and not previous.return_sequences:
            length = None
        elif isinstance(previous, (Conv1DLayer, Pooling1DLayer)):
            length = previous.output_length(length) if length else length
        elif isinstance(previous, RepeatVectorLayer):
            length = previous.times
        elif isinstance(previous, TimestepLayer):
            length = None
    if not length or length < 1:
        raise UnsupportedLayerError(f"{layer.where()}: its input is not a sequence (a recurrent layer before it "
                                    "has return_sequences=False)")
    size = lowered[-1].output_size if lowered else int(declared_features[-1])
    mode = "max" if layer.class_name.startswith("GlobalMax") else "average"
    return [Pooling1DLayer(f"{layer.name}/pool", mode, length, length, int(size)),
            TimestepLayer(f"{layer.name}/step", 0, int(size))]


def _activation(layer: KerasLayer, lowered: list, keras_major: int):
    """An ``Activation`` layer: nothing for ``linear``; folded into the Dense before it when that
    Dense is linear (Keras 2-era models write ``Dense(1), Activation('sigmoid')``); else refused."""
    name = activation_name(layer.config.get("activation"), keras_major, layer, "activation")
    if name == "linear":
        return None
    previous = lowered[-1] if lowered else None
    if isinstance(previous, DenseLayer) and previous.activation == "linear":
        previous.activation = name
        return None
    raise UnsupportedLayerError(
        f"{layer.where()}: Activation('{name}') is supported after a Dense with a linear activation (or as "
        f"'linear'), not after {type(previous).__name__ if previous else 'the input'}")


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
    if not isinstance(model_config, dict):
        raise ModelFormatError(f"{source_name}: the model config is a {type(model_config).__name__}, not an object")
    cls = model_config.get("class_name")
    config = model_config.get("config") or {}
    if cls not in ("Sequential", "Functional", "Model"):
        raise UnsupportedLayerError(f"{source_name}: top-level object is a {cls}, not a Sequential or functional model")
    raw_layers = sequential_layers(config) if cls == "Sequential" else (config.get("layers") if isinstance(config, dict) else None)
    if not isinstance(raw_layers, list):
        raise ModelFormatError(f"{source_name}: model config has no 'layers' list")
    for position, raw in enumerate(raw_layers):
        if not isinstance(raw, dict) or not isinstance(raw.get("config", {}), dict):
            raise ModelFormatError(f"{source_name}: layer {position} of the config is not a layer object ({str(raw)[:80]!r})")
    if cls != "Sequential":
        raw_layers = chain_from_functional(raw_layers, keras_major, source_name)
    declared = None
    chain = []
    position = 0
    for raw in raw_layers:
        layer_cls = raw.get("class_name")
        layer_cfg = raw.get("config") or {}
        name = layer_cfg.get("name") or raw.get("name") or f"layer_{position}"
        layer_cls, layer_cfg = upgrade_layer(layer_cls, layer_cfg, keras_major, f"layer {position} '{name}' ({layer_cls})")
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
