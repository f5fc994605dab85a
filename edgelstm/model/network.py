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
class RepeatVectorLayer:
    """``(features,) -> (times, features)``: an autoencoder's code repeated over the window."""

    name: str
    times: int
    size: int

    kind = "repeat_vector"
    parameter_count = 0

    @property
    def input_size(self) -> int:
        return self.size

    @property
    def output_size(self) -> int:
        return self.size

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
class Pooling1DLayer:
    """Max or average pooling over time (``padding='valid'``)."""

    name: str
    mode: str  # max | average
    pool_size: int
    strides: int
    size: int

    kind = "pooling1d"
    parameter_count = 0

    @property
    def input_size(self) -> int:
        return self.size

    @property
    def output_size(self) -> int:
        return self.size

    def output_length(self, length: int) -> int:
        return (length - self.pool_size) // self.strides + 1

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "units": self.size, "input_size": self.size,
                "mode": self.mode, "pool_size": self.pool_size, "strides": self.strides, "parameters": 0}


@dataclass
class TimestepLayer:
    """One timestep of a sequence: ``y = x[:, index]`` (PyTorch's ``out[:, -1]`` after a
    bidirectional LSTM, where the backward half has read only the last input step)."""

    name: str
    index: int
    size: int

    kind = "timestep"
    parameter_count = 0

    @property
    def input_size(self) -> int:
        return self.size

    @property
    def output_size(self) -> int:
        return self.size

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "units": self.size, "input_size": self.size,
                "index": self.index, "parameters": 0}


#: Layers only a window network has.
WINDOW_ONLY = (BidirectionalLayer, RepeatVectorLayer, Conv1DLayer, Pooling1DLayer, TimestepLayer)


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
              Pooling1DLayer, TimestepLayer]


@dataclass
class Network:
    """A chain of layers over an input of ``n_features`` per timestep.

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

    @property
    def output_mode(self) -> str:
        sequence = True
        for layer in self.layers:
            if isinstance(layer, RECURRENT + (BidirectionalLayer,)):
                sequence = layer.return_sequences
            elif isinstance(layer, RepeatVectorLayer):
                sequence = True
            elif isinstance(layer, TimestepLayer):
                sequence = False
        return "sequence" if sequence else "last"

    def output_length(self) -> int | None:
        """Window networks with a sequence output: its number of timesteps."""
        if self.mode != "window" or self.output_mode != "sequence":
            return None
        length = self.window
        for layer in self.layers:
            if isinstance(layer, (Conv1DLayer, Pooling1DLayer)):
                length = layer.output_length(length)
            elif isinstance(layer, RepeatVectorLayer):
                length = layer.times
        return length

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
            "parameters": self.parameter_count,
            "layers": [layer.describe() for layer in self.layers],
            "state": [
                {"name": name, "size": size}
                for name, size in zip(self.state_names(), self.state_sizes())
            ],
        }

    def validate(self) -> "Network":
        """Check shapes chain up, activations are known and there is a recurrent layer; return self."""
        if not any(isinstance(layer, RECURRENT + (BidirectionalLayer,)) for layer in self.layers):
            raise UnsupportedLayerError(
                f"{self.source_name or 'model'}: no LSTM or GRU layer found; edgelstm converts recurrent models"
            )
        window = self.mode == "window"
        if window and (self.window is None or self.window < 1):
            raise UnsupportedLayerError(
                f"{self.source_name or 'model'}: a window model (Bidirectional, RepeatVector, Conv1D, go_backwards) "
                "needs a fixed window length: declare it in the model's input shape or give --window N"
            )
        size = self.n_features
        sequence = True  # is the value flowing between layers a sequence (or one vector)?
        length = self.window
        for position, layer in enumerate(self.layers):
            where = f"layer {position} '{layer.name}'"
            if layer.input_size != size:
                raise UnsupportedLayerError(
                    f"{where}: expects {layer.input_size} inputs but the previous layer gives {size}"
                )
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
                sequence = layer.return_sequences
            elif isinstance(layer, EmbeddingLayer):
                if position != 0:
                    raise UnsupportedLayerError(f"{where} (Embedding): only the first layer may be an Embedding")
            elif isinstance(layer, RepeatVectorLayer):
                if sequence:
                    raise UnsupportedLayerError(f"{where} (RepeatVector): repeats a vector, but gets a sequence")
                sequence, length = True, layer.times
            elif isinstance(layer, TimestepLayer):
                if not sequence or not -length <= layer.index < length:
                    raise UnsupportedLayerError(f"{where} (timestep {layer.index}): needs a sequence of more than "
                                                f"{abs(layer.index)} steps")
                sequence = False
            elif isinstance(layer, (Conv1DLayer, Pooling1DLayer)):
                if not sequence:
                    raise UnsupportedLayerError(f"{where} ({layer.kind}): needs a sequence input")
                if isinstance(layer, Conv1DLayer) and layer.activation not in activations.DENSE_ACTIVATIONS:
                    raise UnsupportedLayerError(f"{where} (Conv1D): activation '{layer.activation}' is not supported")
                if isinstance(layer, Conv1DLayer) and layer.padding not in ("valid", "same", "causal"):
                    raise UnsupportedLayerError(f"{where} (Conv1D): padding '{layer.padding}' is not supported")
                if isinstance(layer, Conv1DLayer) and layer.strides != 1 and layer.padding != "valid":
                    raise UnsupportedLayerError(f"{where} (Conv1D): strides > 1 only with padding='valid'")
                length = layer.output_length(length)
                if length < 1:
                    raise UnsupportedLayerError(f"{where} ({layer.kind}): the window of {self.window} steps is too short for it")
            elif isinstance(layer, DenseLayer):
                if layer.activation not in activations.DENSE_ACTIVATIONS:
                    raise UnsupportedLayerError(
                        f"{where} (Dense): activation '{layer.activation}' "
                        f"is not supported; supported: {', '.join(activations.DENSE_ACTIVATIONS)}"
                    )
            size = layer.output_size
        return self


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

