"""The abstract values the ONNX lowering computes with, the op tables, and small helpers.

See :mod:`edgelstm.convert.importers.onnx_import` for how the lowering uses them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgelstm.errors import UnsupportedLayerError
from edgelstm.model.network import GRULayer, LSTMLayer


#: Ops that carry the model's computation.
COMPUTE_OPS = ("LSTM", "GRU", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Tanh", "Softmax")
#: Glue ops the exporters emit around them (shape handling, constants, identities).
GLUE_OPS = ("Transpose", "Squeeze", "Unsqueeze", "Reshape", "Concat", "Gather", "Slice", "Shape", "Constant",
            "ConstantOfShape", "Expand", "Identity", "Cast", "Dropout", "Neg", "Equal", "Not", "Where",
            "If (on a condition known from shapes)")
SUPPORTED_OPS = COMPUTE_OPS + GLUE_OPS

#: ONNX RNN activation names (lower case) -> Network activation names.
_RNN_ACTIVATIONS = {"sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu"}
#: Activations taking (alpha, beta) from ``activation_alpha``/``activation_beta``, and their defaults.
_PARAMETRIC = {"hardsigmoid": (0.2, 0.5), "affine": (1.0, 0.0), "scaledtanh": (1.0, 1.0), "leakyrelu": (0.01, None),
               "thresholdedrelu": (1.0, None), "elu": (1.0, None)}
_DENSE_ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softmax": "softmax"}
_FLOAT_TYPES = (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


# ----------------------------------------------------------------------------------------------
# abstract values


class Dim:
    """A dimension only known at run time (a dynamic batch or time size).

    Compared by identity: the time size read off the input by ``Shape`` is the same object
    as the time axis of every tensor derived from it, which is how a reshape target built
    from ``Shape`` is matched to axes. Arithmetic other than ``* 1``/``+ 0`` gives a new,
    unidentified Dim.
    """

    __slots__ = ("label",)

    def __init__(self, label: str = "?"):
        self.label = label

    def __repr__(self) -> str:
        return f"Dim({self.label})"

    def _keep_if(self, condition: bool):
        return self if condition else Dim()

    def __mul__(self, other):
        return self._keep_if(_is_int(other) and int(other) == 1)

    __rmul__ = __mul__

    def __add__(self, other):
        return self._keep_if(_is_int(other) and int(other) == 0)

    __radd__ = __add__

    def __sub__(self, other):
        return self._keep_if(_is_int(other) and int(other) == 0)

    def __rsub__(self, other):
        return Dim()

    def __floordiv__(self, other):
        return self._keep_if(_is_int(other) and int(other) == 1)

    __truediv__ = __floordiv__

    def __rfloordiv__(self, other):
        return Dim()

    __rtruediv__ = __rfloordiv__

    def __neg__(self):
        return Dim()


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True, eq=False)
class Known:
    """A constant tensor (numeric, or an object array of ints and :class:`Dim` for shapes)."""

    array: np.ndarray


@dataclass(frozen=True, eq=False)
class Uniform:
    """A tensor of unknown shape whose every element is ``value``."""

    value: float


@dataclass(frozen=True, eq=False)
class StateInput:
    """A graph input other than the model input (or a value derived from one)."""

    name: str


@dataclass(frozen=True, eq=False)
class Opaque:
    """A value nothing can be said about; using it where it matters is an error."""

    reason: str


@dataclass(frozen=True)
class Axis:
    """One axis of a :class:`Data` tensor.

    ``role``: ``in`` (an axis of the model input, batch or time until the first LSTM/GRU
    tells them apart; ``tag`` is its position in the input), ``batch``, ``time``,
    ``stack`` (directions of an RNN output, or layers x directions of ``h_n``), ``feat`` or
    ``unit`` (a size-1 axis that means nothing).
    """

    role: str
    size: object  # int or Dim
    tag: int = -1


@dataclass(frozen=True, eq=False)
class InputPart:
    """The model input's features."""

    size: int | object


@dataclass(frozen=True, eq=False)
class RnnOut:
    """One direction of an LSTM/GRU node's hidden output.

    ``when``: ``seq`` (every timestep), ``final`` (after reading the whole sequence),
    ``partial`` (at a sequence end where this direction has read one step only: the
    backward half of a bidirectional ``out[:, -1]``), ``cell`` (the cell state ``c_n``).
    """

    rnn: object  # _Recurrent
    direction: int
    when: str
    origin: str = ""  # the node that made it partial

    @property
    def size(self) -> int:
        return self.rnn.units


@dataclass(frozen=True, eq=False)
class Head:
    """Dense layers applied to the concatenation of ``source`` parts (per timestep when they are sequences)."""

    source: tuple
    layers: tuple

    @property
    def size(self) -> int:
        return self.layers[-1].output_size


@dataclass(frozen=True, eq=False)
class Data:
    """A tensor computed from the model input.

    ``entries`` holds one tuple of parts per entry of the ``stack`` axis, or a single tuple
    when there is none; the feature axis is the concatenation of an entry's parts.
    """

    axes: tuple
    entries: tuple

    @property
    def roles(self) -> tuple:
        return tuple(axis.role for axis in self.axes)

    @property
    def parts(self) -> tuple:
        """The feature parts (only meaningful without a stack axis)."""
        return self.entries[0]

    def with_axes(self, axes, entries=None) -> "Data":
        return Data(tuple(axes), self.entries if entries is None else tuple(entries))


@dataclass(eq=False)
class _Recurrent:
    """An LSTM or GRU node's weights and options, in Network conventions, per direction."""

    name: str
    op: str
    direction: str  # forward | reverse | bidirectional
    units: int
    cells: list  # per direction: dict of arrays and activations
    reset_after: bool
    source: tuple  # the parts its input X is made of

    def layer(self, direction: int, return_sequences: bool, go_backwards: bool, name: str):
        cell = self.cells[direction]
        common = dict(name=name, kernel=cell["kernel"].copy(), recurrent_kernel=cell["recurrent_kernel"].copy(),
                      bias=cell["bias"].copy(), activation=cell["activation"],
                      recurrent_activation=cell["recurrent_activation"], return_sequences=return_sequences,
                      go_backwards=go_backwards)
        if self.op == "GRU":
            return GRULayer(recurrent_bias=cell["recurrent_bias"].copy(), reset_after=self.reset_after, **common)
        return LSTMLayer(**common)

    def reads_backward(self, direction: int) -> bool:
        return self.direction == "reverse" or (self.direction == "bidirectional" and direction == 1)


def _attributes(node) -> dict:
    """A node's attributes by name; a damaged attribute (no readable value) is left out."""
    from onnx import helper

    result = {}
    for attribute in node.attribute:
        try:
            value = helper.get_attribute_value(attribute)
        except Exception:  # an unknown attribute type: a damaged file
            continue
        if value is not None:
            result[_text(attribute.name)] = value
    return result


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _uniform_value(array: np.ndarray):
    """The single value of an array whose elements are all equal (None otherwise)."""
    if array.dtype == object or array.size == 0:
        return None
    flat = np.asarray(array).reshape(-1)
    return float(flat[0]) if np.all(flat == flat[0]) else None


def _layer_name(node, fallback: str) -> str:
    """A layer name from the node's (torch's ``/rnn/LSTM`` becomes ``rnn/LSTM``)."""
    return node.name.strip("/") or fallback


def _settle(value):
    """A symbolic shape vector whose entries all turned out to be known becomes a plain int64 array."""
    if isinstance(value, Known) and value.array.dtype == object and all(_is_int(v) for v in value.array.reshape(-1)):
        return Known(value.array.astype(np.int64))
    return value


def _node_reads(node) -> list:
    """The value names a node reads: its inputs and, for If/Loop/Scan, what its subgraphs read from outside."""
    names = list(node.input)
    for attribute in node.attribute:
        graphs = ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
        for graph in graphs:
            inner = {i.name for i in graph.input} | {t.name for t in graph.initializer}
            for sub in graph.node:
                names += [name for name in _node_reads(sub) if name not in inner]
                inner.update(sub.output)
            names += [o.name for o in graph.output if o.name not in inner]
    return names


def _int_size(size) -> int:
    if not _is_int(size):
        raise UnsupportedLayerError("a feature size is only known at run time; edgelstm needs fixed feature counts")
    return int(size)


def _numpy_dtype(onnx_type: int):
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(onnx_type)


def _tensor_scalar(tensor) -> float:
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor).reshape(-1)[0].item()


def _arith(op: str, a, b):
    if op == "Add":
        return a + b
    if op == "Sub":
        return a - b
    if op == "Mul":
        return a * b
    a_arr, b_arr = np.asarray(a), np.asarray(b)
    if a_arr.dtype == object or b_arr.dtype == object or (
            np.issubdtype(a_arr.dtype, np.integer) and np.issubdtype(b_arr.dtype, np.integer)):
        return a // b
    return a / b


def _group_axes(sizes: list, target: list):
    """Which consecutive input axes form each target dimension of a Reshape, or None.

    ``sizes``: ints or :class:`Dim`; ``target``: ints (``-1`` infers), the very Dim objects
    of ``sizes`` (from ``Shape``), or unidentified Dims (treated like ``-1``). Matches from
    the left up to the one inferred entry, from the right after it; size-1 input axes left
    over join a neighbouring group.
    """
    known = {id(s) for s in sizes if isinstance(s, Dim)}
    wild = [j for j, t in enumerate(target) if (_is_int(t) and t == -1) or (isinstance(t, Dim) and id(t) not in known)]
    if len(wild) > 1 or any(_is_int(t) and t < -1 for t in target):
        return None
    split = wild[0] if wild else len(target)

    def take(order_sizes, targets):
        groups, i = [], 0
        for t in targets:
            group, product = [], 1
            if isinstance(t, Dim):
                while i < len(order_sizes) and order_sizes[i] is not t:
                    if order_sizes[i] != 1:
                        return None, i
                    group.append(i)
                    i += 1
                if i == len(order_sizes):
                    return None, i
                group.append(i)
                i += 1
            else:
                while product != t or (not group and t == 1 and i < len(order_sizes) and order_sizes[i] == 1):
                    if i == len(order_sizes) or not _is_int(order_sizes[i]):
                        return None, i
                    product *= int(order_sizes[i])
                    group.append(i)
                    i += 1
                    if product > t:
                        return None, i
            groups.append(group)
        return groups, i

    left, used_left = take(sizes, target[:split])
    if left is None:
        return None
    right_rev, used_right = take(sizes[::-1][: len(sizes) - used_left], target[split + 1:][::-1] if wild else [])
    if right_rev is None:
        return None
    right = [[len(sizes) - 1 - k for k in group][::-1] for group in right_rev][::-1]
    middle = list(range(used_left, len(sizes) - used_right))
    if wild:
        return left + [middle] + right
    if any(not _is_int(sizes[k]) or sizes[k] != 1 for k in middle):
        return None
    if middle:  # leftover size-1 axes join the last group (or make the only one)
        if not left:
            return None
        left[-1] = left[-1] + middle
    return left
