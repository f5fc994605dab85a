"""The framework-neutral description of a recurrent network.

Importers (Keras 3 archives, legacy Keras 2 HDF5, later ONNX) produce a :class:`Network`;
the numpy reference, the exporters and the calibrator consume it. Nothing here knows a
framework: layers are plain dataclasses holding float32 numpy weights.

Conventions:

- An :class:`LSTMLayer` keeps Keras' gate order in its weight columns: input, forget,
  cell candidate, output (``i, f, g, o``). Importers of other orders (ONNX's ``i, o, f, c``)
  reorder on import.
- Layers that are the identity at inference (Dropout and friends) never reach a Network;
  BatchNormalization arrives as an :class:`AffineLayer` and :func:`fold_affine_layers`
  merges it into a neighbouring weight matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np

from . import activations
from .errors import UnsupportedLayerError

#: Gate order of LSTM weight columns inside a Network.
GATE_ORDER = ("i", "f", "g", "o")


@dataclass
class LSTMLayer:
    """One LSTM layer: ``z = x W + h U + b``; gates split from ``z`` in :data:`GATE_ORDER`."""

    name: str
    kernel: np.ndarray  # (input_size, 4 * units)
    recurrent_kernel: np.ndarray  # (units, 4 * units)
    bias: np.ndarray  # (4 * units,)
    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"
    return_sequences: bool = False

    kind = "lstm"

    @property
    def units(self) -> int:
        return int(self.recurrent_kernel.shape[0])

    @property
    def input_size(self) -> int:
        return int(self.kernel.shape[0])

    @property
    def output_size(self) -> int:
        return self.units

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
            "parameters": self.parameter_count,
        }


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


Layer = Union[LSTMLayer, DenseLayer]


@dataclass
class Network:
    """A chain of LSTM and Dense layers over an input of ``n_features`` per timestep.

    ``output_mode`` is ``"last"`` when the source model outputs one value per sequence
    (its last LSTM has ``return_sequences=False``) and ``"sequence"`` when it outputs one
    value per timestep. The step model computes the same thing in both cases: the output
    the source model would give if the sequence ended at this step.
    """

    n_features: int
    layers: list
    source_format: str = "unknown"
    source_name: str = ""
    notes: list = field(default_factory=list)

    @property
    def input_kind(self) -> str:
        """``"token"`` when the model starts with an Embedding (one integer id per step), else ``"features"``."""
        return "token" if self.layers and isinstance(self.layers[0], EmbeddingLayer) else "features"

    @property
    def vocabulary(self) -> int | None:
        return self.layers[0].vocabulary if self.input_kind == "token" else None

    @property
    def lstm_layers(self) -> list:
        return [layer for layer in self.layers if isinstance(layer, LSTMLayer)]

    @property
    def output_size(self) -> int:
        return self.layers[-1].output_size

    @property
    def output_mode(self) -> str:
        lstms = self.lstm_layers
        return "sequence" if lstms[-1].return_sequences else "last"

    @property
    def parameter_count(self) -> int:
        return sum(layer.parameter_count for layer in self.layers)

    def state_names(self) -> list:
        """Names of the recurrent state tensors, in the order every export uses."""
        names = []
        for index, _ in enumerate(self.lstm_layers):
            names += [f"h_{index}", f"c_{index}"]
        return names

    def state_sizes(self) -> list:
        sizes = []
        for layer in self.lstm_layers:
            sizes += [layer.units, layer.units]
        return sizes

    def describe(self) -> dict:
        return {
            "n_features": self.n_features,
            "input_kind": self.input_kind,
            "vocabulary": self.vocabulary,
            "output_size": self.output_size,
            "output_mode": self.output_mode,
            "parameters": self.parameter_count,
            "layers": [layer.describe() for layer in self.layers],
            "state": [
                {"name": name, "size": size}
                for name, size in zip(self.state_names(), self.state_sizes())
            ],
        }

    def validate(self) -> "Network":
        """Check shapes chain up, activations are known and there is an LSTM; return self."""
        if not any(isinstance(layer, LSTMLayer) for layer in self.layers):
            raise UnsupportedLayerError(
                f"{self.source_name or 'model'}: no LSTM layer found; edgelstm converts recurrent models"
            )
        size = self.n_features
        seen_last_lstm = False
        for position, layer in enumerate(self.layers):
            if layer.input_size != size:
                raise UnsupportedLayerError(
                    f"layer {position} '{layer.name}': expects {layer.input_size} inputs "
                    f"but the previous layer gives {size}"
                )
            if isinstance(layer, LSTMLayer):
                if seen_last_lstm:
                    raise UnsupportedLayerError(
                        f"layer {position} '{layer.name}': an LSTM follows an LSTM with "
                        "return_sequences=False"
                    )
                seen_last_lstm = not layer.return_sequences
                for attr, allowed in (
                    ("activation", activations.LSTM_ACTIVATIONS),
                    ("recurrent_activation", activations.LSTM_ACTIVATIONS),
                ):
                    if getattr(layer, attr) not in allowed:
                        raise UnsupportedLayerError(
                            f"layer {position} '{layer.name}' (LSTM): {attr} "
                            f"'{getattr(layer, attr)}' is not supported; supported: {', '.join(allowed)}"
                        )
            elif isinstance(layer, EmbeddingLayer):
                if position != 0:
                    raise UnsupportedLayerError(f"layer {position} '{layer.name}' (Embedding): only the first layer may be an Embedding")
            elif isinstance(layer, DenseLayer):
                if layer.activation not in activations.DENSE_ACTIVATIONS:
                    raise UnsupportedLayerError(
                        f"layer {position} '{layer.name}' (Dense): activation '{layer.activation}' "
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
        if isinstance(following, (DenseLayer, LSTMLayer)):
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

