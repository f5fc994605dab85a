"""Keras layer configs (Keras 2 or 3) lowered into the framework-neutral :class:`Network`.

Both Keras file formats come down to the same thing: a chain of layer configs (JSON) and,
per layer, its weight arrays in Keras' variable order. This module checks every layer of
the chain against what is supported *before* any weight is read, and refuses the whole
model on the first unsupported one: nothing is half-converted and no code from the file
is ever run (a Lambda's bytecode is never even decoded).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgelstm.errors import ModelFormatError, UnsupportedLayerError
from .keras_old import merge_recurrent_weights, sequential_layers, upgrade_layer
from edgelstm.model.network import (
    INPUT, fold_affine_layers, shape_after, ActivationLayer, AffineLayer, AttentionLayer,
    BidirectionalLayer, Conv1DLayer, DenseLayer, EmbeddingLayer, FlattenLayer, GRULayer, LSTMLayer,
    LayerNormLayer, MergeLayer, MultiHeadAttentionLayer, Network, OutputsLayer, Pooling1DLayer,
    RepeatVectorLayer, TimestepLayer,
)

#: Layers that are the identity at inference time.
IDENTITY_LAYERS = ("Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization")
SUPPORTED_LAYERS = ("InputLayer", "Embedding (first layer)", "LSTM", "GRU", "Bidirectional(LSTM|GRU)", "Dense",
                    "Activation",
                    "TimeDistributed(Dense)", "RepeatVector", "Conv1D", "MaxPooling1D", "AveragePooling1D",
                    "GlobalAveragePooling1D", "GlobalMaxPooling1D", "LayerNormalization", "Flatten (after a sequence)",
                    "Reshape (to the same shape, or flat)",
                    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
                    "Attention (dot, use_scale, causal)", "AdditiveAttention (use_scale, causal)",
                    "MultiHeadAttention (self and cross, causal)",
                    "BatchNormalization") + IDENTITY_LAYERS
#: The pseudo-layer that joins a functional model's several outputs (not a Keras class: its name
#: cannot clash with a layer's, which Keras never writes with angle brackets).
OUTPUTS_CLASS = "<outputs>"
#: Keras' merge layers and the :class:`MergeLayer` mode each becomes.
MERGE_CLASSES = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply", "Average": "average",
                 "Maximum": "maximum", "Minimum": "minimum", "Concatenate": "concatenate"}
#: Layers a later version may convert.
NOT_YET_SUPPORTED = ("SimpleRNN", "ConvLSTM1D", "Masking")
#: Call options each class understands (``training`` and a ``mask`` of None change nothing at inference).
CALL_OPTIONS = {"Attention": ("use_causal_mask",), "AdditiveAttention": ("use_causal_mask",),
                "MultiHeadAttention": ("use_causal_mask",)}
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
    inputs: tuple = ()  # functional models: the names of the layers it reads, in argument order
    call: dict = field(default_factory=dict)  # functional models: the call's options (use_causal_mask)

    def where(self) -> str:
        return f"layer {self.position} '{self.name}' ({self.class_name})"


#: What reading a damaged config can raise where it expected another type: each becomes a named error.
CONFIG_FAULTS = (ValueError, TypeError, AttributeError, KeyError, IndexError)


@contextlib.contextmanager
def reading(what: str, source_name: str):
    """Turn a config value of the wrong type or form, met while reading ``what`` (a layer), into a
    :class:`ModelFormatError` naming the file and the layer, never a traceback."""
    try:
        yield
    except CONFIG_FAULTS as exc:
        raise ModelFormatError(f"{source_name}: {what}: its config is damaged or of a form edgelstm does not "
                               f"know ({type(exc).__name__}: {str(exc)[:120]})") from None


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


def _check_call(layer: KerasLayer) -> None:
    """A functional layer's call options: the ones its class understands, or ones that change nothing."""
    for option, value in layer.call.items():
        if option in CALL_OPTIONS.get(layer.class_name, ()) or option in ("training", "mask") or value in (None, False):
            continue
        raise UnsupportedLayerError(f"{layer.where()}: is called with {option}={value!r}, which is not supported"
                                    + ("; the step model returns one output" if option == "return_attention_scores" else ""))


def check_supported(layers: list, source_name: str = "model") -> None:
    """Refuse the model if any layer (or layer option) is unsupported."""
    for layer in layers:
        with reading(layer.where(), source_name):
            _check_one(layer)


def _check_one(layer: KerasLayer) -> None:
    """One layer's refusals (see :func:`check_supported`)."""
    cls = layer.class_name
    _check_call(layer)
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
        return
    if cls in RECURRENT_CLASSES:
        _check_recurrent(layer, layer.config)
        return
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
        return
    if cls == "Conv1D":
        cfg = layer.config
        if cfg.get("data_format", "channels_last") != "channels_last" or int(cfg.get("groups", 1)) != 1:
            raise UnsupportedLayerError(f"{layer.where()}: only channels_last Conv1D without groups is supported")
        if cfg.get("padding", "valid") not in ("valid", "same", "causal"):
            raise UnsupportedLayerError(f"{layer.where()}: padding {cfg.get('padding')!r} is not supported")
        return
    if cls in ("MaxPooling1D", "AveragePooling1D"):
        cfg = layer.config
        if cfg.get("padding", "valid") != "valid" or cfg.get("data_format", "channels_last") != "channels_last":
            raise UnsupportedLayerError(f"{layer.where()}: only padding='valid', channels_last pooling is supported")
        return
    if cls == "RepeatVector":
        return
    if cls in ("GlobalAveragePooling1D", "GlobalMaxPooling1D"):
        cfg = layer.config
        if cfg.get("data_format", "channels_last") != "channels_last" or cfg.get("keepdims"):
            raise UnsupportedLayerError(f"{layer.where()}: only channels_last, keepdims=False global pooling is supported")
        return
    if cls == "BatchNormalization":
        axis = layer.config.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if axis not in (-1, 2):
            raise UnsupportedLayerError(
                f"{layer.where()}: BatchNormalization over axis {axis} is not supported; "
                "only the feature axis (-1)"
            )
        return
    if cls == "Embedding":
        if layer.config.get("mask_zero"):
            raise UnsupportedLayerError(f"{layer.where()}: mask_zero=True (masking) is not supported")
        return
    if cls == "Attention":
        if layer.config.get("score_mode", "dot") != "dot":
            raise UnsupportedLayerError(f"{layer.where()}: score_mode {layer.config.get('score_mode')!r} is not "
                                        "supported; only 'dot'")
        return
    if cls == "AdditiveAttention":  # dropout is inference's identity; use_scale and the causal mask convert
        return
    if cls == "MultiHeadAttention":
        cfg = layer.config
        if cfg.get("use_gate") or cfg.get("sliding_window") is not None:
            raise UnsupportedLayerError(f"{layer.where()}: use_gate and sliding_window are not supported")
        if cfg.get("attention_axes") not in (None, [1], 1, (1,)):
            raise UnsupportedLayerError(f"{layer.where()}: attention_axes {cfg.get('attention_axes')!r} is not "
                                        "supported; only attention over time (axis 1)")
        return
    if cls == "LayerNormalization":
        cfg = layer.config
        axis = cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if axis not in (-1, 2) or cfg.get("rms_scaling"):
            raise UnsupportedLayerError(f"{layer.where()}: only LayerNormalization over the feature axis (-1), "
                                        "without rms_scaling, is supported")
        return
    if cls in ("InputLayer", "Dense", "Activation", "Flatten", "Reshape", OUTPUTS_CLASS) or cls in IDENTITY_LAYERS or cls in MERGE_CLASSES:
        return
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
    """Lower checked layers (a Sequential's chain, or a functional model's graph in dependency
    order, each naming its inputs) into a validated :class:`Network`.

    ``read_weights(layer)`` returns the layer's arrays in Keras variable order. A window
    network (Bidirectional, RepeatVector, Conv1D, go_backwards) takes its window length
    from ``window``, else from the model's declared input shape, else from its RepeatVector.
    """
    check_supported(layers, source_name)
    with reading("its input shape or layer sizes", source_name):  # the parts named per layer say which layer
        return _build_network(layers, read_weights, keras_major, source_format, source_name, declared_features, window)


def _build_network(layers, read_weights, keras_major, source_format, source_name, declared_features, window) -> Network:
    """:func:`build_network` after the checks."""
    declared_length = declared_features[1] if declared_features and len(declared_features) >= 2 else None
    graph = _Lowering(source_name, declared_features, window or declared_length)
    notes = []
    for layer in layers:
        with reading(layer.where(), source_name):
            _lower_one(layer, graph, read_weights, keras_major, source_name, window, notes)
    if not graph.layers:
        raise UnsupportedLayerError(f"{source_name}: the model has no layer with weights")
    with reading("the network", source_name):
        network = graph.network(source_format, notes)
    lowered = network.layers
    token_model = network.input_kind == "token"
    if declared_features is not None:
        rank = len(declared_features)
        if token_model and rank != 2:
            raise UnsupportedLayerError(f"{source_name}: an Embedding model takes (batch, time) token ids, not shape {tuple(declared_features)}")
        if not token_model and rank != 3:
            raise UnsupportedLayerError(
                f"model input has shape {tuple(declared_features)}; an LSTM model takes (batch, time, features)"
            )
    if network.mode == "window":  # (batch, T, features), or (batch, T) token ids
        if window and declared_length and int(window) != int(declared_length):
            raise UnsupportedLayerError(
                f"{source_name}: the model declares windows of {declared_length} steps; --window {window} contradicts it"
            )
        repeats = [layer.times for layer in lowered if isinstance(layer, RepeatVectorLayer)]
        network.window = window or declared_length or (repeats[0] if repeats else None)
    return network.validate()


def _lower_one(layer: KerasLayer, graph: "_Lowering", read_weights, keras_major: int, source_name: str, window, notes: list) -> None:
    """Lower one Keras layer onto the network being built (see :func:`build_network`)."""
    cls = layer.class_name
    sources = graph.sources(layer)
    if cls == "InputLayer":
        graph.alias(layer, INPUT)
        return
    if cls in IDENTITY_LAYERS:
        graph.alias(layer, sources[0])
        return
    if cls == "Activation":
        name = activation_name(layer.config.get("activation"), keras_major, layer, "activation")
        if name == "linear":
            graph.alias(layer, sources[0])
        else:
            graph.emit(layer, ActivationLayer(layer.name, name, graph.size(sources[0], layer)), sources)
        return
    if cls in MERGE_CLASSES:
        graph.emit(layer, _merge(layer, sources, graph), sources)
        return
    if cls == "Reshape":  # shape bookkeeping only: the same shape, or a sequence laid out flat (Flatten)
        size, sequence, length = graph.shape(sources[0], layer)
        target = [int(v) for v in (layer.config.get("target_shape") or [])]
        if target == ([length, size] if sequence else [size]) and (length or not sequence):
            graph.alias(layer, sources[0])
        elif sequence and length and target == [length * size]:
            graph.emit(layer, FlattenLayer(layer.name, int(length), int(size)), sources)
        else:
            shape = f"({length}, {size})" if sequence else f"({size},)"
            raise UnsupportedLayerError(f"{layer.where()}: Reshape of {shape} to {tuple(target)} is not supported; only "
                                        "to the same shape or, from a sequence, to one flat vector (as Flatten)")
        return
    if cls == "Flatten":
        if layer.config.get("data_format", "channels_last") != "channels_last":
            raise UnsupportedLayerError(f"{layer.where()}: only channels_last Flatten is supported")
        size, sequence, length = graph.shape(sources[0], layer)
        if not sequence:  # a vector stays what it is
            graph.alias(layer, sources[0])
            return
        if not length:
            raise UnsupportedLayerError(f"{layer.where()}: Flatten needs a fixed window: a model with a declared input "
                                        "length or edgelstm convert --window T")
        graph.emit(layer, FlattenLayer(layer.name, int(length), graph.size(sources[0], layer)), sources)
        return
    if cls == OUTPUTS_CLASS:
        graph.emit(layer, OutputsLayer(OUTPUTS_CLASS, tuple(layer.inputs), tuple(graph.size(n, layer) for n in sources)), sources)
        return
    if cls in ("Attention", "AdditiveAttention") and not layer.config.get("use_scale"):
        graph.emit(layer, _attention(layer, sources, graph, []), sources)
        return
    weights = [np.asarray(w, dtype=np.float32) for w in read_weights(layer)]
    if cls in RECURRENT_CLASSES:
        weights = merge_recurrent_weights(cls, weights, keras_major)
    cfg = layer.config
    try:
        if cls in RECURRENT_CLASSES:
            graph.emit(layer, _recurrent(layer, cls, cfg, weights, keras_major, layer.name), sources)
            if cfg.get("stateful"):
                notes.append(f"{layer.name}: stateful=True (batch size baked in for training); the step model "
                             "carries state between calls itself, for any number of streams")
        elif cls == "Bidirectional":
            graph.emit(layer, _bidirectional(layer, cfg, weights, keras_major), sources)
        elif cls == "RepeatVector":
            graph.emit(layer, RepeatVectorLayer(layer.name, int(cfg["n"]), graph.size(sources[0], layer)), sources)
        elif cls == "Conv1D":
            filters = int(cfg["filters"])
            bias = weights[1] if cfg.get("use_bias", True) else np.zeros(filters, np.float32)
            graph.emit(layer, Conv1DLayer(
                layer.name, weights[0], bias, strides=_one(cfg.get("strides")), padding=cfg.get("padding", "valid"),
                dilation=_one(cfg.get("dilation_rate")),
                activation=activation_name(cfg.get("activation"), keras_major, layer, "activation"),
            ), sources)
        elif cls in ("MaxPooling1D", "AveragePooling1D"):
            pool = _one(cfg.get("pool_size"), 2)
            graph.emit(layer, Pooling1DLayer(layer.name, "max" if cls.startswith("Max") else "average", pool,
                                             _one(cfg.get("strides"), pool), graph.size(sources[0], layer)), sources)
        elif cls in ("Dense", "TimeDistributed"):
            dense_cfg = cfg if cls == "Dense" else cfg["layer"]["config"]
            units = int(dense_cfg["units"])
            bias = weights[1] if dense_cfg.get("use_bias", True) else np.zeros(units, np.float32)
            graph.emit(layer, DenseLayer(
                name=layer.name, kernel=weights[0], bias=bias,
                activation=activation_name(dense_cfg.get("activation"), keras_major, layer, "activation"),
            ), sources)
        elif cls in ("GlobalAveragePooling1D", "GlobalMaxPooling1D"):
            _global_pooling(layer, sources, graph)
        elif cls == "BatchNormalization":
            graph.emit(layer, _batch_norm(layer, weights), sources)
        elif cls in ("Attention", "AdditiveAttention"):
            graph.emit(layer, _attention(layer, sources, graph, weights), sources)
        elif cls == "MultiHeadAttention":
            graph.emit(layer, _multi_head_attention(layer, weights, keras_major), sources)
        elif cls == "LayerNormalization":
            graph.emit(layer, _layer_norm(layer, weights, graph.size(sources[0], layer)), sources)
        elif cls == "Embedding":
            graph.emit(layer, EmbeddingLayer(name=layer.name, table=weights[0]), sources)
    except (IndexError, KeyError) as exc:
        raise ModelFormatError(
            f"{source_name}: {layer.where()}: weights or config incomplete ({exc!r} missing); "
            "the file may be truncated"
        ) from None


class _Lowering:
    """The network as it is being lowered: its layers, what each reads, and the shape of every
    value (``(size, is_sequence, length)``), which sizes RepeatVector, pooling and merges."""

    def __init__(self, source_name: str, declared_features, length):
        self.source_name = source_name
        self.layers, self.wiring = [], {}
        self.value_of = {}  # Keras layer name -> the name of the value it gives
        features = declared_features[-1] if declared_features else None
        self.shape_of = {INPUT: (int(features) if features is not None else None, True, length)}
        self.previous = INPUT  # a Sequential's layers read the value before them

    def sources(self, layer: KerasLayer) -> list:
        if not layer.inputs:
            return [self.previous]
        try:
            return [self.value_of[name] for name in layer.inputs]
        except KeyError as exc:
            raise ModelFormatError(f"{self.source_name}: {layer.where()} reads {exc}, which gives no value") from None

    def alias(self, layer: KerasLayer, value: str) -> None:
        """A layer that passes its input on (InputLayer, Dropout, a linear Activation)."""
        self.value_of[layer.name] = self.previous = value

    def size(self, value: str, layer: KerasLayer) -> int:
        size = self.shape_of[value][0]
        if size is None:
            raise UnsupportedLayerError(f"{self.source_name}: {layer.where()} reads the model input, whose feature count "
                                        "the model does not declare (give it an input shape)")
        return int(size)

    def shape(self, value: str, layer: KerasLayer) -> tuple:
        return self.shape_of[value]

    def emit(self, keras_layer: KerasLayer, layer, sources: list) -> None:
        if self.shape_of[INPUT][0] is None and INPUT in sources:  # the input's size from the first layer reading it
            self.shape_of[INPUT] = (layer.input_size, True, self.shape_of[INPUT][2])
        self.layers.append(layer)
        self.wiring[layer.name] = tuple(sources)
        self.shape_of[layer.name] = shape_after(layer, [self.shape_of[name] for name in sources])
        self.value_of[keras_layer.name] = self.previous = layer.name

    def network(self, source_format: str, notes: list) -> Network:
        """The lowered layers as a Network: BatchNormalization folded (a chain) or a diagonal Dense
        (a graph), an Activation after a linear Dense nothing else reads folded into it."""
        network = Network(n_features=1, layers=self.layers, source_format=source_format,
                          source_name=self.source_name, notes=notes, wiring=dict(self.wiring))
        _fold_activations(network)
        if network.is_chain:
            network.wiring = None
            network.layers = fold_affine_layers(network.layers)
        else:
            network.layers = [_affine_as_dense(layer) if isinstance(layer, AffineLayer) else layer for layer in network.layers]
        token = network.input_kind == "token"
        size = self.shape_of[INPUT][0]
        network.n_features = 1 if token else int(size if size is not None else network.layers[0].input_size)
        return network


def _fold_activations(network: Network) -> None:
    """``Dense(linear) -> Activation(a)`` with nothing else reading the Dense becomes ``Dense(a)``
    (Keras 2-era models write ``Dense(1), Activation('sigmoid')``): one op fewer, exactly."""
    by_name = {layer.name: layer for layer in network.layers}
    readers = network.consumers()
    for layer in list(network.layers):
        if not isinstance(layer, ActivationLayer):
            continue
        (source,) = network.wiring[layer.name]
        dense = by_name.get(source)
        if isinstance(dense, DenseLayer) and dense.activation == "linear" and readers.get(source) == [layer.name]:
            dense.activation = layer.activation
            network.layers.remove(layer)
            for name, sources in network.wiring.items():
                network.wiring[name] = tuple(source if s == layer.name else s for s in sources)
            del network.wiring[layer.name]


def _affine_as_dense(layer: AffineLayer) -> DenseLayer:
    """BatchNormalization inside a graph: a diagonal Dense (exact; still one fully-connected op)."""
    return DenseLayer(layer.name, np.diag(layer.scale).astype(np.float32), layer.shift.astype(np.float32), "linear")


def _merge(layer: KerasLayer, sources: list, graph: _Lowering) -> MergeLayer:
    """Keras' Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate (features axis)."""
    mode = MERGE_CLASSES[layer.class_name]
    shapes = [graph.shape(name, layer) for name in sources]
    sizes = tuple(graph.size(name, layer) for name in sources)
    if mode == "concatenate":
        axis = layer.config.get("axis", -1)
        feature_axis = 2 if shapes[0][1] else 1  # (batch, time, features) or (batch, features)
        if axis not in (-1, feature_axis):
            raise UnsupportedLayerError(f"{graph.source_name}: {layer.where()}: concatenates along axis {axis}; only "
                                        f"along the features (axis -1) is supported")
    return MergeLayer(layer.name, mode, sizes)


def _causal(layer: KerasLayer) -> bool:
    """Keras 3 (and tf-keras >= 2.10) pass ``use_causal_mask`` to the call; older tf-keras had ``causal``."""
    return bool(layer.call.get("use_causal_mask") or layer.config.get("causal"))


def _attention(layer: KerasLayer, sources: list, graph: "_Lowering", weights: list) -> AttentionLayer:
    """Keras' dot-product Attention and AdditiveAttention: ``[query, value]`` or ``[query, value,
    key]``; ``use_scale`` adds one learned scalar (dot) or a learned weight per feature (additive)."""
    sizes = tuple(graph.size(name, layer) for name in sources)
    if layer.class_name == "AdditiveAttention":
        scales = np.asarray(weights[0], np.float32).reshape(-1) if weights else None
        return AttentionLayer(layer.name, sizes, 1.0, _causal(layer), "additive", scales)
    scale = float(np.asarray(weights[0]).reshape(-1)[0]) if weights else 1.0
    return AttentionLayer(layer.name, sizes, scale, _causal(layer))


def _multi_head_attention(layer: KerasLayer, weights: list, keras_major: int) -> MultiHeadAttentionLayer:
    """Keras' MultiHeadAttention. Keras 3 stores its four projections as sub-layers in name order
    (key, output, query, value); Keras 2 in call order (query, key, value, output)."""
    cfg = layer.config
    per = 2 if cfg.get("use_bias", True) else 1
    if len(weights) != 4 * per:
        raise ModelFormatError(f"{layer.where()}: {len(weights)} weight arrays, expected {4 * per}")
    groups = [weights[i * per:(i + 1) * per] for i in range(4)]
    if keras_major >= 3:
        key, output, query, value = groups
    else:
        query, key, value, output = groups
    heads, key_dim = int(cfg["num_heads"]), int(cfg["key_dim"])
    value_dim = int(cfg.get("value_dim") or key_dim)

    def parts(group, shape, bias_shape):
        kernel = group[0]
        if kernel.shape[1:] != shape:
            raise ModelFormatError(f"{layer.where()}: a projection kernel has shape {kernel.shape}, expected (features, *{shape})")
        bias = group[1] if per == 2 else np.zeros(bias_shape, np.float32)
        _check_shape(layer, "bias", bias, bias_shape)
        return kernel, bias

    q = parts(query, (heads, key_dim), (heads, key_dim))
    k = parts(key, (heads, key_dim), (heads, key_dim))
    v = parts(value, (heads, value_dim), (heads, value_dim))
    out_kernel = output[0]
    if out_kernel.shape[:2] != (heads, value_dim):
        raise ModelFormatError(f"{layer.where()}: the output kernel has shape {out_kernel.shape}, expected ({heads}, {value_dim}, outputs)")
    out_bias = output[1] if per == 2 else np.zeros(out_kernel.shape[2], np.float32)
    return MultiHeadAttentionLayer(layer.name, *q, *k, *v, out_kernel, out_bias, causal=_causal(layer))


def _bidirectional(layer: KerasLayer, cfg: dict, weights: list, keras_major: int) -> BidirectionalLayer:
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
    return BidirectionalLayer(layer.name, forward, backward, cfg.get("merge_mode", "concat"))


def _layer_norm(layer: KerasLayer, weights: list, size: int) -> LayerNormLayer:
    cfg = layer.config
    weights = list(weights)
    gamma = weights.pop(0) if cfg.get("scale", True) else np.ones(size, np.float32)
    beta = weights.pop(0) if cfg.get("center", True) else np.zeros(size, np.float32)
    for what, array in (("gamma", gamma), ("beta", beta)):
        _check_shape(layer, what, array, (size,))
    return LayerNormLayer(layer.name, gamma, beta, float(cfg.get("epsilon", 1e-3)))


def _global_pooling(layer: KerasLayer, sources: list, graph: _Lowering) -> None:
    """Global average or max pooling over time as the window layers already lowered everywhere
    (numpy reference, TFLite and ONNX window graphs): one pooling window as long as the sequence
    at that point, then its one timestep (the sequence becomes a vector). Needs that length: the
    model's declared input length or ``--window``."""
    _, sequence, length = graph.shape(sources[0], layer)
    if graph.shape_of[INPUT][2] is None:
        raise UnsupportedLayerError(
            f"{layer.where()}: global pooling needs a fixed window: a model with a declared input length "
            "(keras.Input((T, features))) or edgelstm convert --window T")
    if not sequence or not length or length < 1:
        raise UnsupportedLayerError(f"{layer.where()}: its input is not a sequence (a recurrent layer before it "
                                    "has return_sequences=False)")
    size = graph.size(sources[0], layer)
    mode = "max" if layer.class_name.startswith("GlobalMax") else "average"
    pool = Pooling1DLayer(f"{layer.name}/pool", mode, length, length, size)
    graph.emit(layer, pool, sources)
    graph.emit(layer, TimestepLayer(f"{layer.name}/step", 0, size), [pool.name])


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


def graph_from_functional(layer_configs: list, model_config: dict, source_name: str) -> list:
    """A functional model's layers in dependency order (each after the layers it reads), with the
    names each reads and its call options: ``[(layer config, [input names], {options}), ...]``. One input and one output; a layer
    called more than once (a shared layer) and cycles are refused."""
    by_name, order = {}, []
    for cfg in layer_configs:
        name = (cfg.get("config") or {}).get("name") or cfg.get("name")
        if not isinstance(name, str) or name in by_name:
            raise ModelFormatError(f"{source_name}: layer {len(order)} has {'no name' if not isinstance(name, str) else f'the name {name!r} of another layer'}")
        by_name[name] = cfg
        order.append(name)
    inbound, calls = {}, {}
    for name in order:
        nodes = by_name[name].get("inbound_nodes") or []
        if not isinstance(nodes, list):
            raise ModelFormatError(f"{source_name}: layer '{name}': inbound_nodes is not a list")
        if len(nodes) > 1:
            raise UnsupportedLayerError(f"{source_name}: layer '{name}' ({by_name[name].get('class_name')}) is called "
                                        f"{len(nodes)} times (a shared layer); each layer may be called once")
        inbound[name], calls[name] = _call_of(nodes, name, source_name)
        for source in inbound[name]:
            if source not in by_name:
                raise ModelFormatError(f"{source_name}: layer '{name}' reads '{source}', which is not a layer of the model")
    roots = [name for name in order if not inbound[name]]
    if len(roots) != 1:
        raise UnsupportedLayerError(f"{source_name}: the model has {len(roots)} inputs ({', '.join(roots)}); "
                                    "exactly one is supported")
    outputs = _layer_refs(model_config.get("output_layers")) or [n for n in order if not any(n in v for v in inbound.values())]
    if not outputs or len(set(outputs)) != len(outputs):
        raise UnsupportedLayerError(f"{source_name}: the model's outputs ({', '.join(map(str, outputs)) or 'none'}) are "
                                    "not one or more distinct layers")
    needed, todo = set(), list(outputs)
    while todo:  # the output's ancestors: what the output is computed from
        name = todo.pop()
        if name not in by_name:
            raise ModelFormatError(f"{source_name}: the model's output '{name}' is not one of its layers")
        if name not in needed:
            needed.add(name)
            todo.extend(inbound[name])
    placed, result = set(), []
    pending = [name for name in order if name in needed]
    while pending:  # dependency order, the file's order where it allows
        ready = next((name for name in pending if all(source in placed for source in inbound[name])), None)
        if ready is None:
            raise ModelFormatError(f"{source_name}: the layers {', '.join(pending)} read each other in a cycle")
        pending.remove(ready)
        placed.add(ready)
        result.append((by_name[ready], inbound[ready], calls[ready]))
    if len(outputs) > 1:  # several heads: one y, each head on its own scale (an OutputsLayer)
        result.append(({"class_name": OUTPUTS_CLASS, "config": {"name": OUTPUTS_CLASS}}, list(outputs), {}))
    return result


def _layer_refs(value) -> list:
    """Layer names from a model's ``input_layers``/``output_layers``: ``[name, node, tensor]`` or a list of them."""
    if not isinstance(value, list) or not value:
        return []
    if isinstance(value[0], str):
        return [value[0]]
    return [entry[0] for entry in value if isinstance(entry, list) and entry and isinstance(entry[0], str)]


#: Call arguments that are the layer's inputs (attention's ``query``, ``value``, ``key``), in that order.
INPUT_ARGUMENTS = ("query", "value", "key")
#: Call options that change nothing at inference.
IGNORED_CALL_OPTIONS = ("training", "mask")


def _tensor_name(value) -> str | None:
    """The producing layer's name if ``value`` is a serialized tensor (Keras 3 ``__keras_tensor__``
    or Keras 2 ``[name, node, tensor]``), else None."""
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        history = (value.get("config") or {}).get("keras_history")
        return history[0] if isinstance(history, list) and history and isinstance(history[0], str) else None
    if isinstance(value, list) and len(value) >= 3 and isinstance(value[0], str) and all(isinstance(v, int) for v in value[1:3]):
        return value[0]
    return None


def _call_of(nodes, layer_name: str, source_name: str) -> tuple:
    """``(input names in argument order, call options)`` of a layer's one call. Input tensors passed
    as ``query``/``value``/``key`` keywords count as inputs; any other tensor argument (an attention
    mask, initial state) is refused by name."""
    names, options = [], {}

    def keywords(kwargs):
        for key in INPUT_ARGUMENTS:
            if _tensor_name(kwargs.get(key)) is not None:
                names.append(_tensor_name(kwargs[key]))
        for key, value in kwargs.items():
            if key in INPUT_ARGUMENTS and _tensor_name(value) is not None:
                continue
            if _tensor_name(value) is not None or (isinstance(value, list) and any(_tensor_name(v) for v in value)):
                raise UnsupportedLayerError(f"{source_name}: layer '{layer_name}' is called with a tensor as '{key}'; "
                                            "only its inputs may be tensors (no masks or initial states)")
            options[key] = value

    for node in nodes:
        if isinstance(node, dict):  # Keras 3: {"args": [keras_tensor, ...], "kwargs": {...}}
            for arg in node.get("args", []):
                for tensor in arg if isinstance(arg, list) else [arg]:
                    if _tensor_name(tensor) is not None:
                        names.append(_tensor_name(tensor))
            if isinstance(node.get("kwargs"), dict):
                keywords(node["kwargs"])
        elif isinstance(node, list):  # Keras 2: [[name, node_index, tensor_index, kwargs], ...]
            for entry in node:
                if isinstance(entry, list) and entry and isinstance(entry[0], str):
                    names.append(entry[0])
                    if len(entry) > 3 and isinstance(entry[3], dict):
                        keywords(entry[3])
    return names, options


def layers_from_model_config(model_config: dict, keras_major: int, source_name: str) -> tuple:
    """Return ``(layers as KerasLayer, declared input shape or None)`` from a model's JSON config: a
    Sequential's chain, or a functional model's layers in dependency order, each naming its inputs."""
    with reading("its model config", source_name):
        return _layers_from_model_config(model_config, keras_major, source_name)


def _layers_from_model_config(model_config: dict, keras_major: int, source_name: str) -> tuple:
    """The body of :func:`layers_from_model_config`."""
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
        with reading("its layer graph", source_name):
            wired = graph_from_functional(raw_layers, config, source_name)
    else:
        wired = [(raw, [], {}) for raw in raw_layers]
    declared = None
    chain = []
    position = 0
    for raw, inputs, call in wired:
        with reading(f"layer {position}", source_name):
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
                    inputs=tuple(inputs),
                    call=dict(call),
                )
            )
            position += 1
    return chain, declared
