"""The framework-neutral description of a recurrent network.

Importers (Keras 3 archives, legacy Keras 2 HDF5, later ONNX) produce a :class:`Network`;
the numpy reference, the exporters and the calibrator consume it. Nothing here knows a
framework: layers are plain dataclasses holding float32 numpy weights.

Conventions:

- An :class:`LSTMLayer` keeps Keras' gate order in its weight columns: input, forget,
  cell candidate, output (``i, f, g, o``). Importers of other orders (ONNX's ``i, o, f, c``)
  reorder on import. A :class:`GRULayer` keeps Keras' ``z, r, h`` (update, reset,
  candidate); ONNX uses the same order, torch's ``r, z, n`` is reordered on import.
- Two kinds of network. A *step* network (LSTM, GRU, Dense, a leading Embedding) streams:
  one timestep in, one output out, the recurrent state carried between calls. A *window*
  network needs the whole window at once (a Bidirectional layer reads it backwards too, an
  autoencoder repeats its code over the window, a Conv1D looks across timesteps, a
  ``go_backwards`` layer starts at the end); it is exported unrolled over a fixed window
  length and the runtime feeds it its last ``window`` readings at every step.
- Layers that are the identity at inference (Dropout and friends) never reach a Network;
  BatchNormalization arrives as an :class:`AffineLayer` and :func:`fold_affine_layers`
  merges it into a neighbouring weight matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np

from . import activations
from edgelstm.errors import UnsupportedLayerError

#: Gate order of LSTM weight columns inside a Network.
GATE_ORDER = ("i", "f", "g", "o")


class _RecurrentSizes:
    """Sizes shared by the recurrent layers: ``kernel`` is (input, gates * units), ``recurrent_kernel`` (units, ...)."""

    @property
    def units(self) -> int:
        return int(self.recurrent_kernel.shape[0])

    @property
    def input_size(self) -> int:
        return int(self.kernel.shape[0])

    @property
    def output_size(self) -> int:
        return self.units


@dataclass
class LSTMLayer(_RecurrentSizes):
    """One LSTM layer: ``z = x W + h U + b``; gates split from ``z`` in :data:`GATE_ORDER`."""

    name: str
    kernel: np.ndarray  # (input_size, 4 * units)
    recurrent_kernel: np.ndarray  # (units, 4 * units)
    bias: np.ndarray  # (4 * units,)
    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"
    return_sequences: bool = False
    go_backwards: bool = False  # reads the sequence from its end (and returns it in that order)

    kind = "lstm"
    gates = 4
    state_kinds = ("h", "c")

    @property
    def parameter_count(self) -> int:
        return int(self.kernel.size + self.recurrent_kernel.size + self.bias.size)

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "units": self.units,
            "input_size": self.input_size,
            "activation": self.activation,
            "recurrent_activation": self.recurrent_activation,
            "return_sequences": self.return_sequences,
            "go_backwards": self.go_backwards,
            "parameters": self.parameter_count,
        }


@dataclass
class GRULayer(_RecurrentSizes):
    """One GRU layer, gates ``z, r, h`` (update, reset, candidate) in the weight columns.

    ``reset_after=True`` (Keras 3's default, and torch's and ONNX's ``linear_before_reset``)::

        z = rec(x Wz + bz + h Uz + rz)        r = rec(x Wr + br + h Ur + rr)
        hh = act(x Wh + bh + r * (h Uh + rh))
        h' = z * h + (1 - z) * hh

    ``reset_after=False`` (Keras 2's default) applies the reset gate before the matmul:
    ``hh = act(x Wh + bh + (r * h) Uh)``, and has no recurrent bias (zeros here).
    """

    name: str
    kernel: np.ndarray  # (input_size, 3 * units)
    recurrent_kernel: np.ndarray  # (units, 3 * units)
    bias: np.ndarray  # (3 * units,): input bias
    recurrent_bias: np.ndarray  # (3 * units,): recurrent bias (zeros when reset_after=False)
    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"
    return_sequences: bool = False
    reset_after: bool = True
    go_backwards: bool = False

    kind = "gru"
    gates = 3
    state_kinds = ("h",)

    @property
    def parameter_count(self) -> int:
        return int(self.kernel.size + self.recurrent_kernel.size + self.bias.size
                   + (self.recurrent_bias.size if self.reset_after else 0))

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "units": self.units,
            "input_size": self.input_size,
            "activation": self.activation,
            "recurrent_activation": self.recurrent_activation,
            "return_sequences": self.return_sequences,
            "reset_after": self.reset_after,
            "go_backwards": self.go_backwards,
            "parameters": self.parameter_count,
        }


class _SameSize:
    """Layers whose value has the features of their input (``size``)."""

    @property
    def input_size(self) -> int:
        return self.size

    @property
    def output_size(self) -> int:
        return self.size


#: The recurrent layer types.
RECURRENT = (LSTMLayer, GRULayer)


@dataclass
class BidirectionalLayer:
    """A recurrent layer run forwards and a copy run backwards over the window, outputs merged.

    ``backward`` has ``go_backwards=True``; with ``return_sequences`` its output sequence is
    reversed back to input order before merging (as Keras does). ``merge_mode``: concat, sum,
    mul or ave. A window layer.
    """

    name: str
    forward: object  # LSTMLayer | GRULayer
    backward: object
    merge_mode: str = "concat"

    kind = "bidirectional"

    @property
    def return_sequences(self) -> bool:
        return self.forward.return_sequences

    @property
    def input_size(self) -> int:
        return self.forward.input_size

    @property
    def output_size(self) -> int:
        return self.forward.units * (2 if self.merge_mode == "concat" else 1)

    @property
    def parameter_count(self) -> int:
        return self.forward.parameter_count + self.backward.parameter_count

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "units": self.output_size, "input_size": self.input_size,
                "merge_mode": self.merge_mode, "return_sequences": self.return_sequences,
                "forward": self.forward.describe(), "backward": self.backward.describe(),
                "parameters": self.parameter_count}


@dataclass
class RepeatVectorLayer(_SameSize):
    """``(features,) -> (times, features)``: an autoencoder's code repeated over the window."""

    name: str
    times: int
    size: int

    kind = "repeat_vector"
    parameter_count = 0

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "units": self.size, "input_size": self.size,
                "times": self.times, "parameters": 0}


@dataclass
class Conv1DLayer:
    """A 1-D convolution over time: ``y[t] = act(sum_j x[t*stride + j*dilation] K[j] + b)``.

    ``padding``: valid, same (zeros both sides, as Keras) or causal (zeros on the left).
    """

    name: str
    kernel: np.ndarray  # (kernel_size, input_size, filters)
    bias: np.ndarray  # (filters,)
    strides: int = 1
    padding: str = "valid"
    dilation: int = 1
    activation: str = "linear"

    kind = "conv1d"

    @property
    def kernel_size(self) -> int:
        return int(self.kernel.shape[0])

    @property
    def input_size(self) -> int:
        return int(self.kernel.shape[1])

    @property
    def output_size(self) -> int:
        return int(self.kernel.shape[2])

    @property
    def parameter_count(self) -> int:
        return int(self.kernel.size + self.bias.size)

    def pads(self) -> tuple:
        """Zero rows added ``(before, after)`` the window."""
        span = (self.kernel_size - 1) * self.dilation
        if self.padding == "causal":
            return span, 0
        if self.padding == "same":  # Keras/TF 'same' for stride 1: extra row after
            return span // 2, span - span // 2
        return 0, 0

    def output_length(self, length: int) -> int:
        before, after = self.pads()
        span = (self.kernel_size - 1) * self.dilation
        return (length + before + after - span - 1) // self.strides + 1

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "units": self.output_size, "input_size": self.input_size,
                "kernel_size": self.kernel_size, "strides": self.strides, "padding": self.padding,
                "dilation": self.dilation, "activation": self.activation, "parameters": self.parameter_count}


@dataclass
class Pooling1DLayer(_SameSize):
    """Max or average pooling over time (``padding='valid'``)."""

    name: str
    mode: str  # max | average
    pool_size: int
    strides: int
    size: int

    kind = "pooling1d"
    parameter_count = 0


    def output_length(self, length: int) -> int:
        return (length - self.pool_size) // self.strides + 1

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "units": self.size, "input_size": self.size,
                "mode": self.mode, "pool_size": self.pool_size, "strides": self.strides, "parameters": 0}


@dataclass
class TimestepLayer(_SameSize):
    """One timestep of a sequence: ``y = x[:, index]`` (PyTorch's ``out[:, -1]`` after a
    bidirectional LSTM, where the backward half has read only the last input step)."""

    name: str
    index: int
    size: int

    kind = "timestep"
    parameter_count = 0

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "units": self.size, "input_size": self.size,
                "index": self.index, "parameters": 0}


@dataclass
class AttentionLayer:
    """Attention over sequences (Keras' ``Attention`` and ``AdditiveAttention``): inputs
    ``[query, value]`` or ``[query, value, key]`` (key defaults to value); ``y = softmax(scores)
    value`` over the keys. ``score_mode`` ``dot`` (Luong style): ``scores = scale * query key^T``;
    ``additive`` (Bahdanau style): ``scores[i, j] = sum_d scales[d] tanh(query[i, d] + key[j, d])``.
    ``causal``: query step ``i`` sees keys ``0..i`` only (``use_causal_mask=True``). A window layer."""

    name: str
    sizes: tuple  # features of query, value (and key)
    scale: float = 1.0  # dot: the learned scalar of use_scale=True
    causal: bool = False
    score_mode: str = "dot"  # dot | additive
    scales: np.ndarray | None = None  # additive: the learned vector of use_scale=True (None: ones)

    kind = "attention"

    @property
    def parameter_count(self) -> int:
        return 0 if self.scales is None else int(np.size(self.scales))

    def score_scales(self) -> np.ndarray:
        """Additive attention's weight per query feature (ones without ``use_scale``)."""
        size = int(self.sizes[0])
        return np.ones(size, np.float32) if self.scales is None else np.asarray(self.scales, np.float32).reshape(size)

    @property
    def input_size(self) -> int:
        return int(self.sizes[0])

    @property
    def output_size(self) -> int:
        return int(self.sizes[1])

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "units": self.output_size, "input_size": self.input_size,
                "sizes": [int(s) for s in self.sizes], "scale": float(self.scale), "causal": self.causal,
                "score_mode": self.score_mode, "parameters": self.parameter_count}


@dataclass
class MultiHeadAttentionLayer:
    """Keras' ``MultiHeadAttention`` (and torch's ``nn.MultiheadAttention``) over sequences: inputs
    ``[query, value]`` or ``[query, value, key]``. Per head ``h``: ``q = query Wq[:, h] + bq[h]`` (and
    ``k``, ``v`` alike), ``a = softmax(q k^T / sqrt(key_dim)) v``; ``y = sum_h a_h Wo[h] + bo``.
    ``causal``: query step ``i`` sees keys ``0..i`` only. A window layer."""

    name: str
    query_kernel: np.ndarray  # (query features, heads, key_dim)
    query_bias: np.ndarray  # (heads, key_dim)
    key_kernel: np.ndarray  # (key features, heads, key_dim)
    key_bias: np.ndarray
    value_kernel: np.ndarray  # (value features, heads, value_dim)
    value_bias: np.ndarray  # (heads, value_dim)
    output_kernel: np.ndarray  # (heads, value_dim, outputs)
    output_bias: np.ndarray  # (outputs,)
    causal: bool = False

    kind = "multi_head_attention"

    @property
    def heads(self) -> int:
        return int(self.query_kernel.shape[1])

    @property
    def key_dim(self) -> int:
        return int(self.query_kernel.shape[2])

    @property
    def input_size(self) -> int:
        return int(self.query_kernel.shape[0])

    @property
    def output_size(self) -> int:
        return int(self.output_kernel.shape[2])

    @property
    def input_sizes(self) -> tuple:
        """Features of query, value and key."""
        return int(self.query_kernel.shape[0]), int(self.value_kernel.shape[0]), int(self.key_kernel.shape[0])

    @property
    def parameter_count(self) -> int:
        return int(sum(getattr(self, name).size for name in MULTI_HEAD_ARRAYS))

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "units": self.output_size, "input_size": self.input_size,
                "heads": self.heads, "key_dim": self.key_dim, "value_dim": int(self.value_kernel.shape[2]),
                "causal": self.causal, "parameters": self.parameter_count}


#: The arrays of a :class:`MultiHeadAttentionLayer`, in the order files store them here.
MULTI_HEAD_ARRAYS = ("query_kernel", "query_bias", "key_kernel", "key_bias", "value_kernel", "value_bias",
                     "output_kernel", "output_bias")

@dataclass
class FlattenLayer:
    """``(steps, size) -> (steps * size,)``: a sequence laid out as one vector, step by step (Keras'
    ``Flatten`` after a sequence). A window layer: it needs every step."""

    name: str
    steps: int
    size: int

    kind = "flatten"
    parameter_count = 0

    @property
    def input_size(self) -> int:
        return self.size

    @property
    def output_size(self) -> int:
        return self.steps * self.size

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "units": self.output_size, "input_size": self.size,
                "steps": self.steps, "parameters": 0}


#: Layers only a window network has.
WINDOW_ONLY = (BidirectionalLayer, RepeatVectorLayer, Conv1DLayer, Pooling1DLayer, TimestepLayer, AttentionLayer,
               MultiHeadAttentionLayer, FlattenLayer)

#: What a :class:`MergeLayer` computes from its inputs (Keras' merge layers).
MERGE_MODES = ("add", "subtract", "multiply", "average", "maximum", "minimum", "concatenate")


@dataclass
class MergeLayer:
    """Several inputs of one timestep (or one sequence) combined into one, as Keras' merge layers:
    ``add``, ``subtract`` (exactly two inputs), ``multiply``, ``average``, ``maximum``, ``minimum``
    elementwise, or ``concatenate`` along the features. ``sizes`` are the inputs' feature counts.
    Acts on each timestep alone, so a step network may hold it (a residual connection)."""

    name: str
    mode: str
    sizes: tuple

    kind = "merge"
    parameter_count = 0

    @property
    def input_size(self) -> int:
        return int(self.sizes[0])

    @property
    def output_size(self) -> int:
        return int(sum(self.sizes)) if self.mode == "concatenate" else int(self.sizes[0])

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "units": self.output_size, "input_size": self.input_size,
                "mode": self.mode, "sizes": [int(s) for s in self.sizes], "parameters": 0}


@dataclass
class LayerNormLayer:
    """Layer normalization over the features of each timestep:
    ``y = (x - mean(x)) / sqrt(var(x) + epsilon) * gamma + beta`` (Keras' ``LayerNormalization``
    on the last axis, torch's ``nn.LayerNorm``). Per timestep: a step network may hold it."""

    name: str
    gamma: np.ndarray  # (features,)
    beta: np.ndarray  # (features,)
    epsilon: float = 1e-3

    kind = "layer_norm"

    @property
    def input_size(self) -> int:
        return int(self.gamma.shape[0])

    @property
    def output_size(self) -> int:
        return int(self.gamma.shape[0])

    @property
    def parameter_count(self) -> int:
        return int(self.gamma.size + self.beta.size)

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "units": self.output_size, "input_size": self.input_size,
                "epsilon": float(self.epsilon), "parameters": self.parameter_count}


@dataclass
class ActivationLayer(_SameSize):
    """An activation on its own (Keras' ``Activation`` where it cannot fold into a Dense before it)."""

    name: str
    activation: str
    size: int

    kind = "activation"
    parameter_count = 0

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "units": self.size, "input_size": self.size,
                "activation": self.activation, "parameters": 0}


@dataclass
class OutputsLayer:
    """A model's several outputs (multi-task heads) as one ``y``: ``concat(head_i * scales[i])``.

    The converter sets each ``scales[i]`` to a power of two that brings head ``i`` to about +-1 on
    the calibration data, so an int8 ``y`` gives every head the same resolution (a probability
    head beside a RUL head of order 100 would otherwise get a 0.5 step); the manifest's
    ``outputs[i].factor`` (``1 / scales[i]``, exact) turns them back. Always the last layer."""

    name: str
    heads: tuple  # the output layers' names, in the model's output order
    sizes: tuple
    scales: tuple = ()  # one per head; () means all 1

    kind = "outputs"
    parameter_count = 0

    @property
    def input_size(self) -> int:
        return int(self.sizes[0])

    @property
    def output_size(self) -> int:
        return int(sum(self.sizes))

    def head_scales(self) -> tuple:
        return tuple(self.scales) if self.scales else (1.0,) * len(self.sizes)

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "units": self.output_size, "input_size": self.input_size,
                "heads": list(self.heads), "sizes": [int(s) for s in self.sizes],
                "scales": [float(s) for s in self.head_scales()], "parameters": 0}


#: The model's input, as a layer's source in :attr:`Network.wiring`.
INPUT = "<input>"


@dataclass
class DenseLayer:
    """A fully connected layer applied to each timestep: ``y = act(x W + b)``."""

    name: str
    kernel: np.ndarray  # (input_size, units)
    bias: np.ndarray  # (units,)
    activation: str = "linear"

    kind = "dense"

    @property
    def input_size(self) -> int:
        return int(self.kernel.shape[0])

    @property
    def output_size(self) -> int:
        return int(self.kernel.shape[1])

    @property
    def parameter_count(self) -> int:
        return int(self.kernel.size + self.bias.size)

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "units": self.output_size,
            "input_size": self.input_size,
            "activation": self.activation,
            "parameters": self.parameter_count,
        }


@dataclass
class EmbeddingLayer:
    """A token-id lookup: ``y = table[token]``. Only as the first layer: the step model then
    takes one token id per step (an integer), which is how the guides' text models stream."""

    name: str
    table: np.ndarray  # (vocabulary, dim)

    kind = "embedding"

    @property
    def vocabulary(self) -> int:
        return int(self.table.shape[0])

    @property
    def input_size(self) -> int:
        return 1

    @property
    def output_size(self) -> int:
        return int(self.table.shape[1])

    @property
    def parameter_count(self) -> int:
        return int(self.table.size)

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "units": self.output_size, "input_size": 1,
                "vocabulary": self.vocabulary, "activation": "linear", "parameters": self.parameter_count}


@dataclass
class AffineLayer:
    """A per-feature ``y = x * scale + shift`` (BatchNormalization at inference).

    Only exists between import and :func:`fold_affine_layers`.
    """

    name: str
    scale: np.ndarray
    shift: np.ndarray

    kind = "affine"

    @property
    def input_size(self) -> int:
        return int(self.scale.shape[0])

    @property
    def output_size(self) -> int:
        return int(self.scale.shape[0])


Layer = Union[LSTMLayer, GRULayer, DenseLayer, EmbeddingLayer, BidirectionalLayer, RepeatVectorLayer, Conv1DLayer,
              Pooling1DLayer, TimestepLayer, MergeLayer, LayerNormLayer, ActivationLayer, AttentionLayer,
              MultiHeadAttentionLayer, FlattenLayer, OutputsLayer]


@dataclass
class Network:
    """Layers over an input of ``n_features`` per timestep: a chain, or a graph (a DAG).

    ``layers`` are in an order where each layer comes after its inputs; the last one gives the
    network's output. ``wiring`` maps a layer's name to the names of the layers it reads (in
    argument order; :data:`INPUT` is the model's input); ``None``, or a layer missing from it,
    means the layer reads the one before it (a chain). Residual connections, parallel branches
    and merges are graphs; a graph whose recurrent layers run forward in time and whose other
    layers act per timestep is still a step network.

    ``output_mode`` is ``"last"`` when the source model outputs one value per sequence
    (its last recurrent layer has ``return_sequences=False``) and ``"sequence"`` when it
    outputs one value per timestep. For a step network the step model computes the same
    thing in both cases: the output the source model would give if the sequence ended at
    this step. A window network (:attr:`mode` ``"window"``) has a fixed ``window`` length
    and outputs what the source model gives for that window.
    """

    n_features: int
    layers: list
    source_format: str = "unknown"
    source_name: str = ""
    notes: list = field(default_factory=list)
    window: int | None = None  # window networks: the length they are unrolled over
    wiring: dict | None = None  # layer name -> tuple of source names (graphs only)

    @property
    def is_chain(self) -> bool:
        """Whether every layer reads the one before it (the first reads the input)."""
        previous = INPUT
        for layer in self.layers:
            if tuple(self.sources(layer, previous)) != (previous,):
                return False
            previous = layer.name
        return True

    def sources(self, layer, previous: str) -> tuple:
        """The names of the values ``layer`` reads; ``previous`` is the name of the layer before it."""
        found = (self.wiring or {}).get(layer.name)
        return tuple(found) if found else (previous,)

    def evaluate(self, value, apply):
        """Run the network's data flow: ``apply(layer, inputs)`` for each layer in order, ``inputs``
        the list of values its sources gave (the model input's is ``value``); returns the last
        layer's value. The numpy reference, the exporters and :meth:`validate` all walk the graph
        through this one function."""
        values = {INPUT: value}
        previous = INPUT
        for layer in self.layers:
            values[layer.name] = apply(layer, [values[name] for name in self.sources(layer, previous)])
            previous = layer.name
        return values[previous]

    def consumers(self) -> dict:
        """Value name -> the names of the layers reading it."""
        readers: dict = {}
        previous = INPUT
        for layer in self.layers:
            for name in self.sources(layer, previous):
                readers.setdefault(name, []).append(layer.name)
            previous = layer.name
        return readers

    @property
    def input_kind(self) -> str:
        """``"token"`` when the model starts with an Embedding (one integer id per step), else ``"features"``."""
        return "token" if self.layers and isinstance(self.layers[0], EmbeddingLayer) else "features"

    @property
    def vocabulary(self) -> int | None:
        return self.layers[0].vocabulary if self.input_kind == "token" else None

    @property
    def mode(self) -> str:
        """``"step"`` (streams one timestep per call) or ``"window"`` (needs the whole window)."""
        for layer in self.layers:
            if isinstance(layer, WINDOW_ONLY) or getattr(layer, "go_backwards", False):
                return "window"
        return "step"

    @property
    def recurrent_layers(self) -> list:
        """The step network's recurrent layers (LSTM and GRU), in order; their state is the step model's."""
        return [layer for layer in self.layers if isinstance(layer, RECURRENT)]

    @property
    def lstm_layers(self) -> list:
        return [layer for layer in self.layers if isinstance(layer, LSTMLayer)]

    @property
    def output_size(self) -> int:
        return self.layers[-1].output_size

    def _shapes(self, check: bool = False):
        """``(size, is_sequence, length)`` of the output, flowed through the graph (checked on the way
        when ``check``: the refusals of :meth:`validate`)."""
        positions = {layer.name: position for position, layer in enumerate(self.layers)}

        def flow(layer, inputs):
            if check:
                where = f"layer {positions[layer.name]} '{layer.name}'"
                if isinstance(layer, MergeLayer):
                    _check_merge(layer, inputs, where)
                elif isinstance(layer, (AttentionLayer, MultiHeadAttentionLayer)):
                    _check_attention(layer, inputs, where)
                elif isinstance(layer, OutputsLayer):
                    _check_outputs(self, layer, inputs, where)
                else:
                    _check_layer(self, layer, positions[layer.name], *inputs[0], where)
            return shape_after(layer, inputs)

        return self.evaluate((self.n_features, True, self.window), flow)

    @property
    def output_mode(self) -> str:
        return "sequence" if self._shapes()[1] else "last"

    def output_length(self) -> int | None:
        """Window networks with a sequence output: its number of timesteps."""
        if self.mode != "window" or self.output_mode != "sequence":
            return None
        return self._shapes()[2]

    @property
    def is_autoencoder(self) -> bool:
        """A window network that reconstructs its input window: its reconstruction error is the anomaly score."""
        return (self.mode == "window" and self.input_kind == "features" and self.output_mode == "sequence"
                and self.output_size == self.n_features and self.output_length() == self.window
                and any(isinstance(layer, RepeatVectorLayer) for layer in self.layers))

    @property
    def parameter_count(self) -> int:
        return sum(layer.parameter_count for layer in self.layers)

    def state_names(self) -> list:
        """Names of the recurrent state tensors, in the order every export uses (none for a window network)."""
        if self.mode == "window":
            return []
        names = []
        for index, layer in enumerate(self.recurrent_layers):
            names += [f"{kind}_{index}" for kind in layer.state_kinds]
        return names

    def state_sizes(self) -> list:
        if self.mode == "window":
            return []
        sizes = []
        for layer in self.recurrent_layers:
            sizes += [layer.units] * len(layer.state_kinds)
        return sizes

    def describe(self) -> dict:
        layers = []
        previous = INPUT
        for layer in self.layers:
            entry = layer.describe()
            if not self.is_chain:  # a graph: each layer names what it reads
                entry["inputs"] = list(self.sources(layer, previous))
            layers.append(entry)
            previous = layer.name
        return {
            "n_features": self.n_features,
            "input_kind": self.input_kind,
            "vocabulary": self.vocabulary,
            "output_size": self.output_size,
            "output_mode": self.output_mode,
            "mode": self.mode,
            "window": self.window,
            "output_length": self.output_length(),
            "autoencoder": self.is_autoencoder,
            "graph": not self.is_chain,
            "parameters": self.parameter_count,
            "layers": layers,
            "state": [
                {"name": name, "size": size}
                for name, size in zip(self.state_names(), self.state_sizes())
            ],
        }

    def validate(self) -> "Network":
        """Check shapes connect, activations are known, the graph is well formed and there is a
        recurrent layer; return self."""
        what = self.source_name or "model"
        if not any(isinstance(layer, RECURRENT + (BidirectionalLayer,)) for layer in self.layers):
            raise UnsupportedLayerError(f"{what}: no LSTM or GRU layer found; edgelstm converts recurrent models")
        if self.mode == "window" and (self.window is None or self.window < 1):
            raise UnsupportedLayerError(
                f"{what}: a window model (Bidirectional, RepeatVector, Conv1D, go_backwards) "
                "needs a fixed window length: declare it in the model's input shape or give --window N"
            )
        self._check_wiring(what)
        self._shapes(check=True)
        return self

    def _check_wiring(self, what: str) -> None:
        """Unique names, sources that exist and come earlier, an Embedding that alone reads the input,
        and no layer whose value nothing reads (but the output)."""
        seen = {INPUT}
        previous = INPUT
        for position, layer in enumerate(self.layers):
            where = f"layer {position} '{layer.name}'"
            if layer.name in seen:
                raise UnsupportedLayerError(f"{what}: {where}: a second layer of that name (names must be unique)")
            for source in self.sources(layer, previous):
                if source not in seen:
                    raise UnsupportedLayerError(f"{what}: {where} reads '{source}', which no earlier layer gives")
            seen.add(layer.name)
            previous = layer.name
        readers = self.consumers()
        for layer in self.layers[:-1]:
            if layer.name not in readers:
                raise UnsupportedLayerError(f"{what}: layer '{layer.name}' gives a value nothing reads "
                                            "(one output per model is supported)")
        if self.input_kind == "token" and readers.get(INPUT) != [self.layers[0].name]:
            raise UnsupportedLayerError(f"{what}: the token ids feed layers other than the Embedding; "
                                        "only the Embedding may read them")


def shape_after(layer, inputs: list) -> tuple:
    """``(size, is_sequence, length)`` of a layer's value from its inputs' (``length``: timesteps
    of a sequence where known)."""
    size, sequence, length = inputs[0]
    if isinstance(layer, RECURRENT + (BidirectionalLayer,)):
        sequence = layer.return_sequences
    elif isinstance(layer, RepeatVectorLayer):
        sequence, length = True, layer.times
    elif isinstance(layer, (TimestepLayer, FlattenLayer)):
        sequence = False
    elif isinstance(layer, (Conv1DLayer, Pooling1DLayer)) and length is not None:
        length = layer.output_length(length)
    return layer.output_size, sequence, length


def _check_attention(layer, inputs: list, where: str) -> None:
    """Attention reads ``[query, value]`` or ``[query, value, key]``, each a sequence; keys and values
    of one length; query and key features as the layer's weights (or, without weights, equal)."""
    if len(inputs) not in (2, 3):
        raise UnsupportedLayerError(f"{where} ({layer.kind}): reads query, value and optionally key; gets {len(inputs)} inputs")
    if not all(sequence for _, sequence, _ in inputs):
        raise UnsupportedLayerError(f"{where} ({layer.kind}): its query, value and key must be sequences")
    sizes = [size for size, _, _ in inputs]
    if len(inputs) == 2:
        sizes.append(sizes[1])
    lengths = [length for _, _, length in inputs] + ([inputs[1][2]] if len(inputs) == 2 else [])
    if lengths[1] != lengths[2]:
        raise UnsupportedLayerError(f"{where} ({layer.kind}): its value and key have different lengths")
    if isinstance(layer, MultiHeadAttentionLayer):
        expected = list(layer.input_sizes)
    else:
        expected = [int(s) for s in layer.sizes] + ([int(layer.sizes[1])] if len(layer.sizes) == 2 else [])
        if sizes[0] != sizes[2]:
            raise UnsupportedLayerError(f"{where} (attention): query ({sizes[0]}) and key ({sizes[2]}) features differ")
        if layer.score_mode == "additive" and len(layer.score_scales()) != sizes[0]:
            raise UnsupportedLayerError(f"{where} (attention): {len(layer.score_scales())} additive scales for "
                                        f"{sizes[0]} query features")
    if sizes != expected:
        raise UnsupportedLayerError(f"{where} ({layer.kind}): expects query, value, key of {tuple(expected)} features, "
                                    f"gets {tuple(sizes)}")


def _check_outputs(network: Network, layer: OutputsLayer, inputs: list, where: str) -> None:
    """Several heads: the last layer, one size and scale per head, heads of one shape kind."""
    if layer is not network.layers[-1]:
        raise UnsupportedLayerError(f"{where} (outputs): only the last layer may join the model's outputs")
    if tuple(size for size, _, _ in inputs) != tuple(layer.sizes) or (layer.scales and len(layer.scales) != len(layer.sizes)):
        raise UnsupportedLayerError(f"{where} (outputs): its heads give {tuple(s for s, _, _ in inputs)} values, "
                                    f"it declares {tuple(layer.sizes)}")
    if len({(sequence, length if sequence else None) for _, sequence, length in inputs}) != 1:
        raise UnsupportedLayerError(f"{where} (outputs): its heads mix sequences and single vectors; every output "
                                    "must be of one kind (all per step, or all per sequence)")


def _check_merge(layer: MergeLayer, inputs: list, where: str) -> None:
    """A merge's inputs: enough of them, the same kind of value (all sequences of one length, or all
    vectors), sizes as its mode needs."""
    if layer.mode not in MERGE_MODES:
        raise UnsupportedLayerError(f"{where} (merge): mode '{layer.mode}' is not supported; supported: "
                                    f"{', '.join(MERGE_MODES)}")
    if len(inputs) < 2 or (layer.mode == "subtract" and len(inputs) != 2):
        raise UnsupportedLayerError(f"{where} ({layer.mode}): needs {'exactly 2' if layer.mode == 'subtract' else '2 or more'} "
                                    f"inputs, gets {len(inputs)}")
    sizes = tuple(size for size, _, _ in inputs)
    if tuple(layer.sizes) != sizes:
        raise UnsupportedLayerError(f"{where} ({layer.mode}): expects inputs of {tuple(layer.sizes)} features, gets {sizes}")
    if layer.mode != "concatenate" and len(set(sizes)) != 1:
        raise UnsupportedLayerError(f"{where} ({layer.mode}): inputs of {sizes} features cannot be combined "
                                    "elementwise; they must be the same size")
    if len({(sequence, length if sequence else None) for _, sequence, length in inputs}) != 1:
        raise UnsupportedLayerError(f"{where} ({layer.mode}): its inputs mix sequences and single vectors (or "
                                    "sequences of different lengths); they must be the same shape")


def _check_layer(network: Network, layer, position: int, size: int, sequence: bool, length, where: str) -> None:
    """One layer's refusals, given the value it reads: ``size`` features, a sequence or not, ``length`` steps."""
    if layer.input_size != size and not isinstance(layer, EmbeddingLayer):
        raise UnsupportedLayerError(f"{where}: expects {layer.input_size} inputs but the previous layer gives {size}")
    if isinstance(layer, RECURRENT + (BidirectionalLayer,)):
        if not sequence:
            raise UnsupportedLayerError(
                f"{where}: a recurrent layer follows one with return_sequences=False "
                "(add RepeatVector between them for an autoencoder)"
            )
        for cell in (layer.forward, layer.backward) if isinstance(layer, BidirectionalLayer) else (layer,):
            for attr in ("activation", "recurrent_activation"):
                if getattr(cell, attr) not in activations.LSTM_ACTIVATIONS:
                    raise UnsupportedLayerError(
                        f"{where} ({cell.kind.upper()}): {attr} '{getattr(cell, attr)}' is not supported; "
                        f"supported: {', '.join(activations.LSTM_ACTIVATIONS)}"
                    )
        if isinstance(layer, BidirectionalLayer) and layer.merge_mode not in ("concat", "sum", "mul", "ave"):
            raise UnsupportedLayerError(f"{where} (Bidirectional): merge_mode '{layer.merge_mode}' is not supported")
    elif isinstance(layer, EmbeddingLayer):
        if position != 0:
            raise UnsupportedLayerError(f"{where} (Embedding): only the first layer may be an Embedding")
        if size != 1:
            raise UnsupportedLayerError(f"{where} (Embedding): reads one token id per step, gets {size} features")
    elif isinstance(layer, RepeatVectorLayer):
        if sequence:
            raise UnsupportedLayerError(f"{where} (RepeatVector): repeats a vector, but gets a sequence")
    elif isinstance(layer, FlattenLayer):
        if not sequence or length != layer.steps:
            raise UnsupportedLayerError(f"{where} (Flatten): flattens a sequence of {layer.steps} steps, gets "
                                        f"{'a sequence of ' + str(length) + ' steps' if sequence else 'a vector'}")
    elif isinstance(layer, TimestepLayer):
        if not sequence or not -length <= layer.index < length:
            raise UnsupportedLayerError(f"{where} (timestep {layer.index}): needs a sequence of more than "
                                        f"{abs(layer.index)} steps")
    elif isinstance(layer, (Conv1DLayer, Pooling1DLayer)):
        if not sequence:
            raise UnsupportedLayerError(f"{where} ({layer.kind}): needs a sequence input")
        if isinstance(layer, Conv1DLayer) and layer.activation not in activations.DENSE_ACTIVATIONS:
            raise UnsupportedLayerError(f"{where} (Conv1D): activation '{layer.activation}' is not supported")
        if isinstance(layer, Conv1DLayer) and layer.padding not in ("valid", "same", "causal"):
            raise UnsupportedLayerError(f"{where} (Conv1D): padding '{layer.padding}' is not supported")
        if isinstance(layer, Conv1DLayer) and layer.strides != 1 and layer.padding != "valid":
            raise UnsupportedLayerError(f"{where} (Conv1D): strides > 1 only with padding='valid'")
        if length is not None and layer.output_length(length) < 1:
            raise UnsupportedLayerError(f"{where} ({layer.kind}): the window of {network.window} steps is too short for it")
    elif isinstance(layer, (DenseLayer, ActivationLayer)):
        if layer.activation not in activations.DENSE_ACTIVATIONS:
            raise UnsupportedLayerError(
                f"{where} ({'Dense' if isinstance(layer, DenseLayer) else 'Activation'}): activation '{layer.activation}' "
                f"is not supported; supported: {', '.join(activations.DENSE_ACTIVATIONS)}"
            )
    elif isinstance(layer, LayerNormLayer):
        if not layer.epsilon > 0:
            raise UnsupportedLayerError(f"{where} (LayerNormalization): epsilon must be positive, is {layer.epsilon}")


def fold_affine_layers(layers: list) -> list:
    """Merge every :class:`AffineLayer` into a neighbouring weight matrix.

    An affine map before a Dense or LSTM folds into that layer's input weights
    (``W' = diag(s) W``, ``b' = b + t W``); after a linear Dense it folds into that
    layer's output (``W' = W diag(s)``, ``b' = b s + t``). Where neither exists (an
    affine map after the last LSTM with nothing behind it) it becomes a diagonal Dense,
    which is still one fully-connected op.
    """
    result = list(layers)
    index = 0
    while index < len(result):
        layer = result[index]
        if not isinstance(layer, AffineLayer):
            index += 1
            continue
        scale = layer.scale.astype(np.float64)
        shift = layer.shift.astype(np.float64)
        following = result[index + 1] if index + 1 < len(result) else None
        previous = result[index - 1] if index > 0 else None
        if isinstance(following, (DenseLayer, LSTMLayer, GRULayer)):
            kernel = following.kernel.astype(np.float64)
            following.bias = (following.bias.astype(np.float64) + shift @ kernel).astype(np.float32)
            following.kernel = (scale[:, None] * kernel).astype(np.float32)
            del result[index]
        elif isinstance(previous, DenseLayer) and previous.activation == "linear":
            previous.kernel = (previous.kernel.astype(np.float64) * scale[None, :]).astype(np.float32)
            previous.bias = (previous.bias.astype(np.float64) * scale + shift).astype(np.float32)
            del result[index]
        elif isinstance(following, AffineLayer):
            following.shift = (shift * following.scale + following.shift).astype(np.float32)
            following.scale = (scale * following.scale).astype(np.float32)
            del result[index]
        else:
            result[index] = DenseLayer(
                name=layer.name,
                kernel=np.diag(scale).astype(np.float32),
                bias=shift.astype(np.float32),
                activation="linear",
            )
            index += 1
    return result

