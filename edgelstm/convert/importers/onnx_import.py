"""ONNX graphs exported from PyTorch (LSTM/GRU models), read into a :class:`~edgelstm.model.network.Network`.

``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``, and the ``torch.export``
based one, ``dynamo=True``) turns ``nn.LSTM``/``nn.GRU`` into ONNX ``LSTM``/``GRU`` ops wrapped
in glue: Transposes for ``batch_first``, Squeeze/Reshape of the ``[seq, num_dir, batch,
hidden]`` output, Concat of the per-layer ``h_n``, Shape/Gather/Slice/Concat arithmetic that
builds zero initial states and reshape targets, and the head (Gemm, MatMul + Add,
activations). This module lowers such a graph into a chain of layers.

How: the file is read with ``onnx`` only (external weight files must sit beside the model:
no ``..``, no absolute path), nothing is executed. The nodes the single output depends on
are interpreted abstractly, in dependency order. Every value becomes one of

- :class:`Known`: a constant array (initializers, Constants, shape arithmetic folded with
  numpy; a dimension only known at run time is a :class:`Dim` in an object array),
- :class:`Uniform`: a tensor of unknown shape filled with one value (zero initial states),
- :class:`StateInput`: a graph input used as an initial state (the step model starts from zero),
- :class:`Data`: a tensor computed from the model input, described by its axes (batch,
  time, direction/layer "stack", features) and what its features are: parts of the chain
  (the input, a direction of an LSTM/GRU output at every step or after the last one, a dense
  head over those).

Pattern matching on ops and symbolic shapes (dims identified by identity, not by value)
instead of running shape inference keeps this independent of which sizes the exporter
made static. At the single output the parts are resolved into layers; anything the
Network cannot express exactly is refused with the node's name and op. ``out[:, -1]`` of a
*bidirectional* layer (its backward half there has read only one step) becomes the whole
sequence and a :class:`~edgelstm.network.TimestepLayer`, a window model. Refused: the cell
state ``c_n`` as output, peepholes, ``clip``, ``input_forget``, ``sequence_lens``, non-zero
constant initial states, residual branches.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from edgelstm.errors import ModelFormatError, UnsupportedLayerError
from edgelstm.model.network import BidirectionalLayer, DenseLayer, GRULayer, LSTMLayer, Network, TimestepLayer

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


# ----------------------------------------------------------------------------------------------
# reading the file


def _tensors_in_graph(graph):
    """Every TensorProto a graph holds: initializers, Constant/attribute tensors, subgraphs' too."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors_in_graph(attribute.g)
            for sub in attribute.graphs:
                yield from _tensors_in_graph(sub)


def _check_external_location(path: Path, tensor, base: Path) -> None:
    """Refuse external data outside the model's directory (``..``, absolute paths, symlinks out)."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    where = f"{path.name}: tensor '{tensor.name}' stores its data in external file {location!r}"
    if not isinstance(location, str) or not location:
        raise ModelFormatError(f"{where}: no readable location given")
    posix, windows = PurePosixPath(location), PureWindowsPath(location)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or location.startswith(("/", "\\")):
        raise ModelFormatError(f"{where}: absolute paths are refused; external data must sit beside the model")
    if ".." in posix.parts or ".." in windows.parts:
        raise ModelFormatError(f"{where}: paths with '..' are refused; external data must sit beside the model")
    target = (base / location).resolve()
    if target != base and base not in target.parents:
        raise ModelFormatError(f"{where}: resolves outside the model's directory; refused")
    if not target.is_file():
        raise ModelFormatError(f"{where}: no such file beside the model (copy it next to {path.name})")
    try:
        offset = int(info.get("offset", 0) or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise ModelFormatError(f"{where}: bad offset/length") from None
    size = target.stat().st_size
    if offset < 0 or offset > size or (length is not None and (length < 0 or offset + length > size)):
        raise ModelFormatError(f"{where}: offset/length beyond the end of {location} ({size} bytes); truncated?")


def read_model(path: Path):
    """Parse an ONNX file and load its external weights (only from beside it); never runs it."""
    import onnx
    from onnx import external_data_helper

    from .limits import check_file_size

    path = Path(path)
    check_file_size(path, path.name)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError, OSError, ...: all mean "not a readable ONNX file"
        raise ModelFormatError(f"{path.name}: not a readable ONNX model ({type(exc).__name__}: {exc}); "
                               "the file may be truncated or damaged") from None
    if not model.ir_version or not model.HasField("graph") or not model.graph.node:
        raise ModelFormatError(f"{path.name}: not an ONNX model (no IR version or no graph nodes)")
    base = path.parent.resolve()
    external = [t for t in _tensors_in_graph(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]
    for tensor in external:
        _check_external_location(path, tensor, base)
    if external:
        try:
            external_data_helper.load_external_data_for_model(model, str(base))
        except Exception as exc:
            raise ModelFormatError(f"{path.name}: its external data cannot be read ({type(exc).__name__}: {exc})") from None
    return model


def external_data_files(path: Path) -> list:
    """The external data files (beside the model, checked as in :func:`read_model`) whose bytes
    are part of the model: the dynamo exporter's ``model.onnx.data``. The converter hashes them."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)  # read_model has parsed it successfully before
    base = path.parent.resolve()
    files = []
    for tensor in _tensors_in_graph(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            _check_external_location(path, tensor, base)
            location = {entry.key: entry.value for entry in tensor.external_data}["location"]
            if location not in files:
                files.append(location)
    return files


# ----------------------------------------------------------------------------------------------
# the lowering


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


class _Lowering:
    """Interprets the graph abstractly (see the module docstring) and builds the Network."""

    def __init__(self, model, source_name: str, window: int | None):
        self.model = model
        self.graph = model.graph
        self.source = source_name
        self.window = window
        self.values: dict = {}
        self.state_inputs: list = []  # graph inputs used as initial states
        self.time_tag: int | None = None  # which input axis is time (known at the first LSTM/GRU)
        self.time_size = None
        self.input_name = ""
        self.input_axes: tuple = ()
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.rnn_count = 0

    # -- errors --------------------------------------------------------------------------------

    @staticmethod
    def where(node) -> str:
        name = node.name or (f"output '{node.output[0]}'" if node.output else "unnamed")
        return f"node '{name}' ({node.op_type})"

    def fail(self, node, message: str):
        raise UnsupportedLayerError(f"{self.source}: {self.where(node)}: {message}")

    def unsupported(self, node):
        raise UnsupportedLayerError(
            f"{self.source}: {self.where(node)} is not supported; edgelstm imports LSTM/GRU models from ONNX with "
            f"these ops: {', '.join(COMPUTE_OPS)} and the glue exporters emit ({', '.join(GLUE_OPS)})"
        )

    # -- entry ---------------------------------------------------------------------------------

    def run(self) -> Network:
        from onnx import numpy_helper

        graph = self.graph
        if not graph.output:
            raise ModelFormatError(f"{self.source}: the graph declares no output; damaged or not a model")
        if len(graph.output) != 1:
            raise UnsupportedLayerError(
                f"{self.source}: the graph has {len(graph.output)} outputs ({', '.join(o.name for o in graph.output)}); "
                "edgelstm converts models with one output (export only the prediction, not (out, h_n))"
            )
        initializers = {}
        for tensor in graph.initializer:
            try:
                initializers[tensor.name] = Known(numpy_helper.to_array(tensor))
            except Exception as exc:
                raise ModelFormatError(f"{self.source}: initializer '{tensor.name}' is unreadable ({exc})") from None
        self.values.update(initializers)
        self._bind_inputs([i for i in graph.input if i.name not in initializers])
        for node in self._needed_nodes(graph.output[0].name):
            self._evaluate(node)
        return self._network(self.values[graph.output[0].name])

    def _needed_nodes(self, output: str) -> list:
        """The nodes ``output`` depends on, in dependency order (iterative depth-first post-order)."""
        producer = {}
        for node in self.graph.node:
            for name in node.output:
                if name:
                    producer[name] = node
        order, done, visiting = [], set(), set()
        stack = [(producer.get(output), False)]
        while stack:
            node, expanded = stack.pop()
            if node is None or id(node) in done:
                continue
            if expanded:
                visiting.discard(id(node))
                done.add(id(node))
                order.append(node)
                continue
            if id(node) in visiting:
                raise ModelFormatError(f"{self.source}: the graph has a cycle through {self.where(node)}")
            visiting.add(id(node))
            stack.append((node, True))
            for name in _node_reads(node):
                if name and name not in self.values:
                    stack.append((producer.get(name), False))
        return order

    def _bind_inputs(self, inputs: list) -> None:
        """Tell the model input (the one reaching an LSTM/GRU's X) from initial-state inputs."""
        consumers: dict = {}
        for node in self.graph.node:
            for slot, name in enumerate(node.input):
                consumers.setdefault(name, []).append((node, slot))
        data_inputs = [i for i in inputs if self._reaches_rnn_input(i.name, consumers)]
        if not data_inputs:
            floats = [i for i in inputs if i.type.tensor_type.elem_type in _FLOAT_TYPES]
            data_inputs = floats[:1] if len(floats) == 1 else []
        if len(data_inputs) != 1:
            raise UnsupportedLayerError(
                f"{self.source}: cannot tell the model input: {len(data_inputs)} of the graph inputs "
                f"({', '.join(i.name for i in inputs) or 'none'}) feed an LSTM/GRU's sequence input; expected one"
            )
        data = data_inputs[0]
        for other in inputs:
            if other is not data:
                self.values[other.name] = StateInput(other.name)
        tensor_type = data.type.tensor_type
        if tensor_type.elem_type not in _FLOAT_TYPES:
            raise UnsupportedLayerError(
                f"{self.source}: input '{data.name}' is not a float tensor (element type {tensor_type.elem_type}); "
                "token-id (Embedding) models are imported from Keras only"
            )
        dims = list(tensor_type.shape.dim)
        if len(dims) != 3:
            raise UnsupportedLayerError(
                f"{self.source}: input '{data.name}' has rank {len(dims)}; expected (batch, time, features) "
                "or (time, batch, features)"
            )
        sizes = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else Dim(d.dim_param or f"axis{k}")
                 for k, d in enumerate(dims)]
        self.input_name = data.name
        self.input_axes = (Axis("in", sizes[0], 0), Axis("in", sizes[1], 1), Axis("feat", sizes[2]))
        self.values[data.name] = Data(self.input_axes, ((InputPart(sizes[2]),),))

    @staticmethod
    def _reaches_rnn_input(name: str, consumers: dict) -> bool:
        """Does ``name`` flow into slot 0 (X) of an LSTM/GRU (not through one)?"""
        seen, frontier = set(), [name]
        while frontier:
            current = frontier.pop()
            for node, slot in consumers.get(current, ()):
                if node.op_type in ("LSTM", "GRU"):
                    if slot == 0:
                        return True
                    continue
                for out in node.output:
                    if out and out not in seen:
                        seen.add(out)
                        frontier.append(out)
        return False

    # -- dispatch ------------------------------------------------------------------------------

    def _evaluate(self, node) -> None:
        if node.domain not in ("", "ai.onnx"):
            self.unsupported(node)
        for name in node.input:
            if name and name not in self.values:
                raise ModelFormatError(f"{self.source}: {self.where(node)} reads '{name}', which nothing produces")
        inputs = [self.values[name] if name else None for name in node.input]
        attrs = _attributes(node)
        op = node.op_type
        if op == "Constant":
            outputs = [self._constant(node, attrs)]
        elif op == "If":
            outputs = self._if(node, inputs, attrs)
        elif op in ("LSTM", "GRU"):
            outputs = self._recurrent(node, inputs, attrs)
        elif any(isinstance(v, Data) for v in inputs):
            outputs = self._on_data(node, inputs, attrs)
        elif any(isinstance(v, StateInput) for v in inputs):
            outputs = self._on_state_input(node, inputs)
        elif any(isinstance(v, Opaque) for v in inputs):
            outputs = [next(v for v in inputs if isinstance(v, Opaque))] * len(node.output)
        elif any(isinstance(v, Uniform) for v in inputs):
            outputs = [self._on_uniform(node, inputs, attrs)]
        else:
            outputs = [self._fold(node, inputs, attrs)]
        for name, value in zip(node.output, outputs):
            if name:
                self.values[name] = _settle(value)

    def _if(self, node, inputs, attrs) -> list:
        """An If whose condition is known from shapes (the TorchScript exporter's ``squeeze(dim)`` on a
        run-time-sized axis): the taken branch's nodes are evaluated in place."""
        condition = inputs[0]
        if not isinstance(condition, Known) or condition.array.dtype == object or condition.array.size != 1:
            self.fail(node, "its condition depends on run-time values; only conditions known from shapes are supported")
        branch = attrs["then_branch" if bool(condition.array.reshape(-1)[0]) else "else_branch"]
        from onnx import numpy_helper

        for tensor in branch.initializer:
            self.values[tensor.name] = Known(numpy_helper.to_array(tensor))
        for inner in branch.node:
            self._evaluate(inner)
        return [self.values[output.name] for output in branch.output]

    def _constant(self, node, attrs) -> Known:
        from onnx import numpy_helper

        if "value" in attrs:
            return Known(numpy_helper.to_array(attrs["value"]))
        for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                           ("value_ints", np.int64)):
            if key in attrs:
                return Known(np.asarray(attrs[key], dtype=dtype))
        self.fail(node, f"Constant with {', '.join(map(str, attrs)) or 'no value'} is not supported")

    # -- constants and shape arithmetic --------------------------------------------------------

    def _known(self, node, value, what: str) -> np.ndarray:
        if isinstance(value, Known):
            return value.array
        if isinstance(value, Opaque):
            self.fail(node, f"{what} cannot be determined ({value.reason})")
        self.fail(node, f"{what} must be a constant (it is computed from {self._describe(value)})")

    @staticmethod
    def _describe(value) -> str:
        if isinstance(value, Data):
            return "the model input"
        if isinstance(value, StateInput):
            return f"input '{value.name}'"
        return type(value).__name__

    def _ints(self, node, value, what: str) -> list:
        array = self._known(node, value, what)
        items = array.reshape(-1).tolist()
        if not all(_is_int(v) for v in items):
            self.fail(node, f"{what} must be known integers")
        return [int(v) for v in items]

    def _axes_argument(self, node, inputs, attrs, slot: int = 1):
        """Squeeze/Unsqueeze/ReduceX axes: an attribute before opset 13, an input since."""
        if "axes" in attrs:
            return list(attrs["axes"])
        if len(inputs) > slot and inputs[slot] is not None:
            return self._ints(node, inputs[slot], "axes")
        return None

    def _fold(self, node, inputs, attrs) -> Known:
        """Evaluate a glue op on constants (numeric or symbolic shape vectors) with numpy."""
        op = node.op_type
        arrays = [None if v is None else self._known(node, v, f"input of {op}") for v in inputs]
        a = arrays[0] if arrays else None
        try:
            if op in ("Identity", "Dropout"):
                return Known(a)
            if op == "Cast":
                return Known(a if a.dtype == object else a.astype(_numpy_dtype(attrs.get("to", 1))))
            if op == "Shape":
                shape = np.asarray(a.shape, dtype=np.int64)
                return Known(shape[attrs.get("start", 0): attrs.get("end", len(shape))])
            if op == "Transpose":
                return Known(np.transpose(a, attrs.get("perm")))
            if op == "Reshape":
                return Known(self._reshape_known(node, a, inputs[1], attrs.get("allowzero", 0)))
            if op == "Squeeze":
                axes = self._axes_argument(node, inputs, attrs)
                return Known(np.squeeze(a, axis=None if axes is None else tuple(axes)))
            if op == "Unsqueeze":
                axes = self._axes_argument(node, inputs, attrs)
                rank = a.ndim + len(axes)
                return Known(np.expand_dims(a, tuple(sorted(x % rank for x in axes))))
            if op == "Concat":
                return Known(np.concatenate([x for x in arrays if x is not None], axis=attrs["axis"]))
            if op == "Gather":
                indices = arrays[1]
                if indices.dtype == object:
                    self.fail(node, "gather indices must be known")
                taken = np.take(a, indices.astype(np.int64), axis=attrs.get("axis", 0))
                return Known(taken if isinstance(taken, np.ndarray) else np.array(taken, dtype=a.dtype))
            if op == "Slice":
                return Known(a[self._slices(node, inputs, attrs, a.ndim)])
            if op in ("Add", "Sub", "Mul", "Div"):
                return Known(_arith(op, a, arrays[1]))
            if op == "Neg":
                return Known(-a)
            if op == "Equal":
                if a.dtype == object or arrays[1].dtype == object:
                    return Opaque(f"{self.where(node)} compares sizes only known at run time")
                return Known(np.equal(a, arrays[1]))
            if op == "Not":
                return Known(np.logical_not(a))
            if op == "Where":
                return Known(np.where(a.astype(bool), arrays[1], arrays[2]))
            if op == "ConstantOfShape":
                value = attrs.get("value")
                fill = 0.0 if value is None else _tensor_scalar(value)
                if a.dtype == object:
                    return Uniform(float(fill))
                from onnx import numpy_helper
                dtype = numpy_helper.to_array(value).dtype if value is not None else np.float32
                return Known(np.full([int(v) for v in a.reshape(-1)], fill, dtype=dtype))
            if op == "Expand":
                if arrays[1].dtype == object:
                    fill = _uniform_value(a)
                    return Uniform(fill) if fill is not None else Opaque(f"{self.where(node)} has a run-time shape")
                shape = [int(v) for v in arrays[1].reshape(-1)]
                return Known(np.broadcast_to(a, np.broadcast_shapes(a.shape, tuple(shape))).copy())
        except UnsupportedLayerError:
            raise
        except Exception as exc:  # a malformed constant computation
            raise ModelFormatError(f"{self.source}: {self.where(node)}: cannot evaluate on its constants ({exc})") from None
        self.unsupported(node)

    def _reshape_known(self, node, array, target, allowzero) -> np.ndarray:
        shape = self._known(node, target, "Reshape target").reshape(-1).tolist()
        if not all(_is_int(v) for v in shape):
            self.fail(node, "reshapes a constant to a run-time shape")
        shape = [int(v) for v in shape]
        if not allowzero:
            shape = [array.shape[k] if v == 0 and k < array.ndim else v for k, v in enumerate(shape)]
        return array.reshape(shape)

    def _slices(self, node, inputs, attrs, rank: int) -> tuple:
        """Python slices for a Slice node (opset < 10 attributes, or inputs)."""
        if "starts" in attrs:
            starts, ends = list(attrs["starts"]), list(attrs["ends"])
            axes = list(attrs.get("axes", range(len(starts))))
            steps = [1] * len(starts)
        else:
            starts = self._ints(node, inputs[1], "Slice starts")
            ends = self._ints(node, inputs[2], "Slice ends")
            axes = self._ints(node, inputs[3], "Slice axes") if len(inputs) > 3 and inputs[3] is not None \
                else list(range(len(starts)))
            steps = self._ints(node, inputs[4], "Slice steps") if len(inputs) > 4 and inputs[4] is not None \
                else [1] * len(starts)
        index = [slice(None)] * rank
        for start, end, axis, step in zip(starts, ends, axes, steps):
            if step == 0:
                self.fail(node, "Slice step 0")
            index[axis % rank] = slice(start, end, step)
        return tuple(index)

    def _on_uniform(self, node, inputs, attrs):
        """Shape-only ops keep a filled tensor filled (zero initial states built from a run-time batch size)."""
        op = node.op_type
        first = inputs[0]
        if op in ("Identity", "Cast", "Slice", "Gather", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Expand",
                  "Dropout") and isinstance(first, Uniform):
            return first
        if op == "Concat":
            values = {v.value if isinstance(v, Uniform) else _uniform_value(v.array) for v in inputs if v is not None}
            if len(values) == 1 and None not in values:
                return Uniform(values.pop())
        if op in ("Add", "Sub", "Mul", "Div") and all(isinstance(v, Uniform) or _uniform_value(v.array) is not None
                                                      for v in inputs):
            a, b = (v.value if isinstance(v, Uniform) else _uniform_value(v.array) for v in inputs)
            return Uniform(float(_arith(op, np.float64(a), np.float64(b))))
        if op == "Shape":
            return Opaque(f"the shape of a filled tensor at {self.where(node)}")
        return Opaque(f"{self.where(node)} on a filled tensor of run-time shape")

    def _on_state_input(self, node, inputs):
        """Initial-state inputs may be sliced and reshaped on their way to an LSTM/GRU, nothing else."""
        state = next(v for v in inputs if isinstance(v, StateInput))
        if node.op_type in ("Identity", "Cast", "Slice", "Gather", "Reshape", "Squeeze", "Unsqueeze", "Transpose",
                            "Concat", "Expand", "Dropout"):
            return [state] * len(node.output)
        if node.op_type == "Shape":
            return [Opaque(f"the shape of input '{state.name}'")]
        self.fail(node, f"uses graph input '{state.name}' in a computation; only the model input and "
                        "initial states of LSTM/GRU nodes are supported as inputs")

    # -- recurrent nodes -----------------------------------------------------------------------

    def _recurrent(self, node, inputs, attrs) -> list:
        op = node.op_type
        x = inputs[0] if inputs else None
        if not isinstance(x, Data):
            self.fail(node, "its sequence input X is not computed from the model input")
        layout = int(attrs.get("layout", 0))
        if layout not in (0, 1):
            self.fail(node, f"layout={layout} is not valid")
        direction = _text(attrs.get("direction", "forward"))
        if direction not in ("forward", "reverse", "bidirectional"):
            self.fail(node, f"direction '{direction}' is not valid")
        num_dir = 2 if direction == "bidirectional" else 1
        if "clip" in attrs:
            self.fail(node, f"clip={attrs['clip']} (cell clipping) is not supported")
        if op == "LSTM" and int(attrs.get("input_forget", 0)):
            self.fail(node, "input_forget=1 (coupled input and forget gates) is not supported")
        time, batch = self._sequence_axes(node, x, layout)
        gates = 4 if op == "LSTM" else 3
        W = self._weights(node, inputs, 1, "W")
        R = self._weights(node, inputs, 2, "R")
        units = int(attrs.get("hidden_size", R.shape[-1]))
        in_size = sum(_int_size(p.size) for p in x.parts)
        if W.shape != (num_dir, gates * units, in_size) or R.shape != (num_dir, gates * units, units):
            self.fail(node, f"weights W {W.shape} / R {R.shape} do not fit hidden_size={units}, "
                            f"{num_dir} direction(s) and {in_size} input features")
        B = self._weights(node, inputs, 3, "B", optional=True)
        if B is None:
            B = np.zeros((num_dir, 2 * gates * units), np.float32)
        if B.shape != (num_dir, 2 * gates * units):
            self.fail(node, f"bias B has shape {B.shape}, expected {(num_dir, 2 * gates * units)}")
        if len(inputs) > 4 and inputs[4] is not None:
            self.fail(node, "sequence_lens (variable-length sequences) is not supported; every sequence is read whole")
        for slot, what in ((5, "initial_h"), (6, "initial_c")):
            if len(inputs) > slot and inputs[slot] is not None:
                self._check_initial_state(node, inputs[slot], what)
        if op == "LSTM" and len(inputs) > 7 and inputs[7] is not None:
            peepholes = inputs[7]
            if not (isinstance(peepholes, Known) and not np.any(peepholes.array)) and \
                    not (isinstance(peepholes, Uniform) and peepholes.value == 0):
                self.fail(node, "peephole connections (input P) are not supported")
        activations = self._rnn_activations(node, attrs, 3 if op == "LSTM" else 2, num_dir)
        reset_after = bool(int(attrs.get("linear_before_reset", 0))) if op == "GRU" else True
        cells = [self._cell(node, op, W[d], R[d], B[d], units, activations[d], reset_after) for d in range(num_dir)]
        self.rnn_count += 1
        name = _layer_name(node, f"{op.lower()}_{self.rnn_count}")
        rnn = _Recurrent(name, op, direction, units, cells, reset_after, x.parts)
        stack = Axis("stack", num_dir)
        feat = Axis("feat", units)
        y_axes = (time, stack, batch, feat) if layout == 0 else (batch, time, stack, feat)
        h_axes = (stack, batch, feat) if layout == 0 else (batch, stack, feat)
        y = Data(y_axes, tuple((RnnOut(rnn, d, "seq"),) for d in range(num_dir)))
        y_h = Data(h_axes, tuple((RnnOut(rnn, d, "final"),) for d in range(num_dir)))
        y_c = Data(h_axes, tuple((RnnOut(rnn, d, "cell"),) for d in range(num_dir)))
        return [y, y_h, y_c][: len(node.output)]

    def _sequence_axes(self, node, x: Data, layout: int) -> tuple:
        """X's (time, batch) axes: (time, batch, features) for layout 0, (batch, time, features) for 1.

        The first LSTM/GRU reading the model input tells which input axis is time."""
        roles = x.roles
        if len(roles) != 3 or roles[2] != "feat":
            self.fail(node, f"its input X has axes {self._axes_text(x)}; expected a (time, batch, features) sequence")
        time, batch = (x.axes[0], x.axes[1]) if layout == 0 else (x.axes[1], x.axes[0])
        if time.role == "in" and batch.role == "in":
            if self.time_tag is not None and self.time_tag != time.tag:
                self.fail(node, "reads the model input with time and batch axes swapped relative to another LSTM/GRU")
            self.time_tag = time.tag
            self.time_size = time.size
        elif (time.role, batch.role) != ("time", "batch"):
            self.fail(node, f"its input X has axes ({time.role}, {batch.role}, features) where (time, batch, "
                            "features) is expected for its layout")
        return Axis("time", time.size), Axis("batch", batch.size)

    def _weights(self, node, inputs, slot: int, what: str, optional: bool = False):
        value = inputs[slot] if len(inputs) > slot else None
        if value is None:
            if optional:
                return None
            self.fail(node, f"weight input {what} is missing")
        array = self._known(node, value, f"weight input {what}")
        if array.dtype == object or not np.issubdtype(array.dtype, np.floating):
            self.fail(node, f"weight input {what} is not a float tensor")
        return array.astype(np.float32)

    def _check_initial_state(self, node, value, what: str) -> None:
        """Zero initial states are what the step model starts from; an input one is noted, others refused."""
        if isinstance(value, StateInput):
            if value.name not in self.state_inputs:
                self.state_inputs.append(value.name)
            return
        if isinstance(value, Uniform) and value.value == 0.0:
            return
        if isinstance(value, Known) and value.array.dtype != object and not np.any(value.array):
            return
        if isinstance(value, (Known, Uniform)):
            self.fail(node, f"{what} is a non-zero constant; only zero initial states (or state inputs) are supported")
        self.fail(node, f"{what} is computed from {self._describe(value)}; only zero initial states are supported")

    def _rnn_activations(self, node, attrs, count: int, num_dir: int) -> list:
        """Per direction: (recurrent_activation, activation) from ONNX's f, g(, h) activation list."""
        names = [_text(n) for n in attrs.get("activations", [])]
        if not names:
            names = (["Sigmoid", "Tanh", "Tanh"] if count == 3 else ["Sigmoid", "Tanh"]) * num_dir
        if len(names) != count * num_dir:
            self.fail(node, f"{len(names)} activations given, expected {count * num_dir}")
        alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
        mapped = []
        for name in names:
            key = name.lower()
            if key in _PARAMETRIC:
                default_alpha, default_beta = _PARAMETRIC[key]
                alpha = alphas.pop(0) if alphas else default_alpha
                beta = (betas.pop(0) if betas else default_beta) if default_beta is not None else None
                mapped.append(self._parametric_activation(node, key, name, alpha, beta))
            elif key in _RNN_ACTIVATIONS:
                mapped.append(_RNN_ACTIVATIONS[key])
            else:
                self.fail(node, f"activation '{name}' is not supported (Sigmoid, Tanh, Relu, HardSigmoid, Affine(1, 0))")
        result = []
        for d in range(num_dir):
            own = mapped[d * count:(d + 1) * count]
            if count == 3 and own[1] != own[2]:
                self.fail(node, f"cell activation g='{own[1]}' differs from output activation h='{own[2]}'; "
                                "edgelstm's LSTM uses one activation for both")
            result.append((own[0], own[1]))
        return result

    def _parametric_activation(self, node, key, name, alpha, beta) -> str:
        if key == "hardsigmoid" and math.isclose(beta, 0.5, abs_tol=1e-7):
            if math.isclose(alpha, 0.2, abs_tol=1e-7):
                return "hard_sigmoid_keras2"
            if math.isclose(alpha, 1.0 / 6.0, abs_tol=1e-7):
                return "hard_sigmoid"
        if key == "affine" and math.isclose(alpha, 1.0) and beta == 0.0:
            return "linear"
        self.fail(node, f"activation {name}(alpha={alpha}, beta={beta}) is not supported "
                        "(HardSigmoid(0.2, 0.5), HardSigmoid(1/6, 0.5) and Affine(1, 0) are)")

    @staticmethod
    def _cell(node, op, W, R, B, units, activations, reset_after) -> dict:
        """One direction's weights in Network layout: (in, gates*u) columns in Keras gate order."""
        recurrent_activation, activation = activations
        if op == "LSTM":
            order = [0, 2, 3, 1]  # ONNX i, o, f, c -> Keras i, f, c(g), o
            rows = np.concatenate([np.arange(k * units, (k + 1) * units) for k in order])
            bias = (B[: 4 * units].astype(np.float64) + B[4 * units:]).astype(np.float32)
            return dict(kernel=np.ascontiguousarray(W[rows].T), recurrent_kernel=np.ascontiguousarray(R[rows].T),
                        bias=bias[rows], recurrent_bias=None, activation=activation,
                        recurrent_activation=recurrent_activation)
        # GRU: ONNX z, r, h is Keras' order already
        input_bias, recurrent_bias = B[: 3 * units], B[3 * units:]
        if not reset_after:  # linear_before_reset=0: Rb_h is added outside the reset product, like Wb_h
            input_bias = (input_bias.astype(np.float64) + recurrent_bias).astype(np.float32)
            recurrent_bias = np.zeros(3 * units, np.float32)
        return dict(kernel=np.ascontiguousarray(W.T), recurrent_kernel=np.ascontiguousarray(R.T),
                    bias=input_bias.copy(), recurrent_bias=recurrent_bias.copy(), activation=activation,
                    recurrent_activation=recurrent_activation)

    # -- ops on data ---------------------------------------------------------------------------

    def _on_data(self, node, inputs, attrs) -> list:
        op = node.op_type
        data = inputs[0]
        if op in ("Identity", "Dropout"):
            if op == "Dropout" and len(inputs) > 2 and isinstance(inputs[2], Known) and np.any(inputs[2].array):
                self.fail(node, "Dropout in training mode")
            return [data, Opaque(f"the dropout mask of {self.where(node)}")]
        if op == "Cast":
            if attrs.get("to") not in (1, 11):
                self.fail(node, f"casts the data to element type {attrs.get('to')}; only float32/float64 are supported")
            return [data]
        if op == "Shape":
            sizes = [axis.size for axis in data.axes][attrs.get("start", 0): attrs.get("end", len(data.axes))]
            dtype = object if any(isinstance(s, Dim) for s in sizes) else np.int64
            return [Known(np.asarray(sizes, dtype=dtype))]
        if not isinstance(data, Data) and op not in ("Concat", "Add", "Sub", "Mul", "Div", "MatMul"):
            self.fail(node, f"its first input is {self._describe(data)}, not the data")
        handler = {
            "Transpose": self._transpose, "Squeeze": self._squeeze, "Unsqueeze": self._unsqueeze,
            "Reshape": self._reshape, "Gather": self._gather, "Slice": self._slice, "Concat": self._concat,
            "Gemm": self._gemm, "MatMul": self._matmul, "Add": self._add, "Sub": self._add, "Mul": self._mul,
            "Div": self._mul, "Expand": self._expand,
        }.get(op)
        if handler is None:
            if op in _DENSE_ACTIVATIONS:
                return [self._activation(node, data, attrs)]
            if op == "Neg":
                return [self._scale(node, data, np.float32(-1.0))]
            self.unsupported(node)
        return [handler(node, inputs, attrs)]

    def _transpose(self, node, inputs, attrs) -> Data:
        data = inputs[0]
        perm = attrs.get("perm", list(range(len(data.axes)))[::-1])
        return data.with_axes([data.axes[p] for p in perm])

    def _squeeze(self, node, inputs, attrs) -> Data:
        data = inputs[0]
        axes = self._axes_argument(node, inputs, attrs)
        rank = len(data.axes)
        if axes is None:
            axes = [k for k, axis in enumerate(data.axes) if axis.role in ("unit", "stack") and axis.size == 1]
        axes = {a % rank for a in axes}
        entries = data.entries
        for k in axes:
            axis = data.axes[k]
            if axis.role == "stack" and axis.size == 1:
                entries = (data.entries[0],)
            elif axis.role != "unit":
                self.fail(node, f"squeezes the {axis.role} axis (size {axis.size})")
        return Data(tuple(a for k, a in enumerate(data.axes) if k not in axes), entries)

    def _unsqueeze(self, node, inputs, attrs) -> Data:
        data = inputs[0]
        axes = self._axes_argument(node, inputs, attrs)
        rank = len(data.axes) + len(axes)
        result = list(data.axes)
        for k in sorted(a % rank for a in axes):
            result.insert(k, Axis("unit", 1))
        return data.with_axes(result)

    def _expand(self, node, inputs, attrs) -> Data:
        data = inputs[0]
        shape = self._known(node, inputs[1], "Expand shape").reshape(-1).tolist()
        if len(shape) <= len(data.axes) and all(_is_int(s) and s == 1 for s in shape):
            return data
        self.fail(node, "broadcasts the data to a larger shape")

    def _reshape(self, node, inputs, attrs) -> Data:
        """Reshapes that merge a (directions, features) pair or add/drop size-1 axes."""
        data = inputs[0]
        target = self._known(node, inputs[1], "Reshape target").reshape(-1).tolist()
        sizes = [axis.size for axis in data.axes]
        if not attrs.get("allowzero", 0):
            target = [sizes[k] if _is_int(t) and t == 0 and k < len(sizes) else t for k, t in enumerate(target)]
        groups = _group_axes(sizes, target)
        if groups is None:
            self.fail(node, f"reshapes axes {self._axes_text(data)} to {self._target_text(target)}; only merging "
                            "directions into features and adding or removing size-1 axes are supported")
        axes, entries = [], data.entries
        for group, size in zip(groups, target):
            members = [data.axes[k] for k in group if data.axes[k].role != "unit"]
            roles = [a.role for a in members]
            if not members:
                axes.append(Axis("unit", 1))
            elif len(members) == 1:
                axes.append(members[0])
            elif roles == ["stack", "feat"]:
                entries = (tuple(part for entry in data.entries for part in entry),)
                axes.append(Axis("feat", sum(_int_size(p.size) for p in entries[0])))
            elif len(members) == 2 and "stack" in roles and members[roles.index("stack")].size == 1:
                entries = (data.entries[0],)
                axes.append(members[1 - roles.index("stack")])
            else:
                self.fail(node, f"merges the {' and '.join(roles)} axes; only (directions, features) can be merged")
        return Data(tuple(axes), entries)

    @staticmethod
    def _axes_text(data: Data) -> str:
        return "(" + ", ".join(f"{a.role}:{a.size if _is_int(a.size) else '?'}" for a in data.axes) + ")"

    @staticmethod
    def _target_text(target) -> str:
        return "[" + ", ".join(str(t) if _is_int(t) else "?" for t in target) + "]"

    def _gather(self, node, inputs, attrs) -> Data:
        data = inputs[0]
        indices = self._known(node, inputs[1], "Gather indices")
        axis = attrs.get("axis", 0) % len(data.axes)
        if indices.dtype == object or indices.ndim > 1:
            self.fail(node, "gathers with run-time or multi-dimensional indices")
        if indices.size != 1:
            if indices.ndim == 1 and data.axes[axis].role == "stack":  # h_n[[-2, -1]]
                return self._select_stack(node, data, axis, [int(i) for i in indices], keep=True)
            self.fail(node, "gathers several positions; only single positions (h_n[-1], out[:, -1]) are supported")
        return self._pick(node, data, axis, [int(indices.reshape(-1)[0])], keep=indices.ndim == 1)

    def _pick(self, node, data: Data, axis: int, positions: list, keep: bool) -> Data:
        """Select ``positions`` of one axis (a Gather or Slice), dropping the axis unless ``keep``."""
        role = data.axes[axis].role
        if role == "stack":
            return self._select_stack(node, data, axis, positions, keep)
        if role == "unit" and positions in ([0], [-1]):
            return data if keep else data.with_axes(data.axes[:axis] + data.axes[axis + 1:])
        if role == "time" and len(positions) == 1:
            size = data.axes[axis].size
            index = positions[0]
            which = None
            if index == -1 or (_is_int(size) and index == int(size) - 1):
                which = "last"
            elif index == 0 or (_is_int(size) and index == -int(size)):
                which = "first"
            if which is None:
                self.fail(node, f"selects timestep {index}; only the last timestep (or the first, for a "
                                "backward direction) can be taken")
            entries = tuple(tuple(self._select_time(node, part, which) for part in entry) for entry in data.entries)
            axes = list(data.axes)
            if keep:
                axes[axis] = Axis("unit", 1)
            else:
                del axes[axis]
            return Data(tuple(axes), entries)
        if role == "in":
            self.fail(node, "selects along an axis of the model input before any LSTM/GRU; only per-timestep "
                            "operations may come before the first recurrent layer")
        self.fail(node, f"selects along the {role} axis; not supported")

    def _select_stack(self, node, data: Data, axis: int, positions: list, keep: bool) -> Data:
        count = len(data.entries)
        try:
            entries = tuple(data.entries[p] for p in positions)
        except IndexError:
            self.fail(node, f"index {positions} out of range for {count} entries")
        axes = list(data.axes)
        if keep:
            axes[axis] = Axis("stack", len(entries))
        else:
            if len(entries) != 1:
                self.fail(node, "selects several entries")
            del axes[axis]
        return Data(tuple(axes), entries)

    def _select_time(self, node, part, which: str):
        """A part at the sequence's last (or first) position."""
        if isinstance(part, RnnOut):
            if part.when != "seq":
                self.fail(node, "selects a timestep of a value without a time axis")
            reads_backward = part.rnn.reads_backward(part.direction)
            complete = (which == "last") != reads_backward
            return RnnOut(part.rnn, part.direction, "final" if complete else "partial", self.where(node))
        if isinstance(part, Head):
            return Head(tuple(self._select_time(node, p, which) for p in part.source), part.layers)
        self.fail(node, "selects a timestep of the model input; only the recurrent layers' outputs may be selected")

    def _slice(self, node, inputs, attrs) -> Data:
        data = inputs[0]
        index = self._slices(node, inputs, attrs, len(data.axes))
        for axis, item in enumerate(index):
            if item == slice(None):
                continue
            size = data.axes[axis].size
            probes = [int(size)] if _is_int(size) else [1000, 1001]
            picks = [list(range(*item.indices(n))) for n in probes]
            kinds = set()
            for n, pick in zip(probes, picks):
                if pick == list(range(n)):
                    kinds.add("all")
                elif pick == [n - 1]:
                    kinds.add("last")
                elif pick == [0]:
                    kinds.add("first")
                else:
                    kinds.add(tuple(pick))
            if len(kinds) != 1:
                self.fail(node, "slices a run-time-sized axis to a range that depends on its size")
            kind = kinds.pop()
            if kind == "all":
                continue
            positions = [-1] if kind == "last" else [0] if kind == "first" else list(kind)
            if data.axes[axis].role == "time" and len(positions) == 1:
                data = self._pick(node, data, axis, positions, keep=True)
            elif data.axes[axis].role == "stack":
                data = self._select_stack(node, data, axis, positions, keep=True)
            elif data.axes[axis].role == "unit":
                continue
            else:
                self.fail(node, f"slices the {data.axes[axis].role} axis; not supported")
        return data

    def _concat(self, node, inputs, attrs) -> Data:
        values = [v for v in inputs if v is not None]
        if not all(isinstance(v, Data) for v in values):
            self.fail(node, "concatenates the data with a constant or another input")
        rank = len(values[0].axes)
        axis = attrs["axis"] % rank
        if any(len(v.axes) != rank for v in values):
            self.fail(node, "concatenates tensors of different ranks")
        role = values[0].axes[axis].role
        if len({tuple(a.role for a in v.axes) for v in values}) != 1:
            self.fail(node, "concatenates tensors whose axes do not line up")
        if role == "stack":
            entries = tuple(entry for v in values for entry in v.entries)
            axes = list(values[0].axes)
            axes[axis] = Axis("stack", len(entries))
            return Data(tuple(axes), entries)
        if role == "feat":
            if "stack" in values[0].roles:
                self.fail(node, "concatenates features of stacked tensors")
            parts = tuple(part for v in values for part in v.parts)
            axes = list(values[0].axes)
            axes[axis] = Axis("feat", sum(_int_size(p.size) for p in parts))
            return Data(tuple(axes), (parts,))
        self.fail(node, f"concatenates along the {role} axis; only directions/layers or features can be concatenated")

    # -- dense heads ---------------------------------------------------------------------------

    def _dense_input(self, node, data: Data) -> int:
        if data.roles[-1] != "feat" or "stack" in data.roles:
            self.fail(node, f"applies weights to a tensor with axes {self._axes_text(data)}; "
                            "expected features on the last axis")
        return sum(_int_size(p.size) for p in data.parts)

    def _append_dense(self, node, data: Data, kernel: np.ndarray, bias: np.ndarray) -> Data:
        size = self._dense_input(node, data)
        if kernel.ndim != 2 or kernel.shape[0] != size:
            self.fail(node, f"weight of shape {kernel.shape} does not fit {size} input features")
        name = _layer_name(node, f"dense_{node.output[0]}")
        layer = DenseLayer(name, np.ascontiguousarray(kernel, dtype=np.float32), bias.astype(np.float32), "linear")
        parts = data.parts
        if len(parts) == 1 and isinstance(parts[0], Head):
            head = Head(parts[0].source, parts[0].layers + (layer,))
        else:
            head = Head(parts, (layer,))
        axes = list(data.axes)
        axes[-1] = Axis("feat", kernel.shape[1])
        return Data(tuple(axes), ((head,),))

    def _open_dense(self, node, data: Data):
        """The data's last dense layer if one can still absorb a bias, scale or activation, else a new identity one."""
        size = self._dense_input(node, data)
        parts = data.parts
        if len(parts) == 1 and isinstance(parts[0], Head) and parts[0].layers[-1].activation == "linear":
            return data, parts[0]
        identity = self._append_dense(node, data, np.eye(size, dtype=np.float32), np.zeros(size, np.float32))
        return identity, identity.parts[0]

    @staticmethod
    def _replace_last(data: Data, head: Head, **changes) -> Data:
        layer = dataclasses.replace(head.layers[-1], **changes)
        return Data(data.axes, ((Head(head.source, head.layers[:-1] + (layer,)),),))

    def _gemm(self, node, inputs, attrs) -> Data:
        data = inputs[0]
        if len(data.axes) != 2:
            self.fail(node, f"Gemm on a tensor with axes {self._axes_text(data)}")
        if attrs.get("transA", 0):
            self.fail(node, "transA=1 is not supported")
        weight = self._weights(node, inputs, 1, "B")
        kernel = (weight.T if attrs.get("transB", 0) else weight) * np.float32(attrs.get("alpha", 1.0))
        out = kernel.shape[1] if kernel.ndim == 2 else 0
        bias = np.zeros(out, np.float32)
        if len(inputs) > 2 and inputs[2] is not None:
            c = self._weights(node, inputs, 2, "C")
            if c.size not in (1, out) or (c.ndim == 2 and c.shape[0] != 1) or c.ndim > 2:
                self.fail(node, f"bias C of shape {c.shape} is not a per-output bias")
            bias = np.broadcast_to(c.reshape(-1), (out,)) * np.float32(attrs.get("beta", 1.0))
        return self._append_dense(node, data, kernel, np.asarray(bias, np.float32))

    def _matmul(self, node, inputs, attrs) -> Data:
        data, weight = inputs[0], inputs[1]
        if not isinstance(data, Data) or isinstance(weight, Data):
            self.fail(node, "only data @ constant weight is supported")
        kernel = self._weights(node, inputs, 1, "weight")
        if kernel.ndim != 2:
            self.fail(node, f"weight of rank {kernel.ndim}; expected a matrix")
        return self._append_dense(node, data, kernel, np.zeros(kernel.shape[1], np.float32))

    def _per_feature(self, node, data: Data, value, what: str) -> np.ndarray:
        """A constant operand broadcast over the feature axis only (a bias or per-feature scale)."""
        array = self._weights(node, [value], 0, what)
        size = self._dense_input(node, data)
        if array.ndim > len(data.axes) or any(d != 1 for d in array.shape[:-1]) or \
                (array.ndim and array.shape[-1] not in (1, size)):
            self.fail(node, f"{what} of shape {array.shape} does not broadcast over the features only")
        return np.broadcast_to(array.reshape(-1), (size,)).astype(np.float32)

    def _operands(self, node, inputs):
        """(data, constant, data_first) of a binary op with one data and one constant operand."""
        a, b = inputs[0], inputs[1]
        if isinstance(a, Data) and isinstance(b, Data):
            self.fail(node, "combines two tensors computed from the input (a residual or gating branch); "
                            "only chains of layers are supported")
        if isinstance(a, Data):
            return a, b, True
        return b, a, False

    def _add(self, node, inputs, attrs) -> Data:
        data, constant, data_first = self._operands(node, inputs)
        bias = self._per_feature(node, data, constant, "added constant")
        if node.op_type == "Sub":
            if not data_first:
                data = self._scale(node, data, np.float32(-1.0))
                data_first = True
            else:
                bias = -bias
        data, head = self._open_dense(node, data)
        layer = head.layers[-1]
        return self._replace_last(data, head, bias=(layer.bias + bias).astype(np.float32))

    def _mul(self, node, inputs, attrs) -> Data:
        data, constant, data_first = self._operands(node, inputs)
        scale = self._per_feature(node, data, constant, "factor")
        if node.op_type == "Div":
            if not data_first:
                self.fail(node, "divides a constant by the data")
            scale = (np.float32(1.0) / scale).astype(np.float32)
        return self._scale(node, data, scale)

    def _scale(self, node, data: Data, scale) -> Data:
        data, head = self._open_dense(node, data)
        layer = head.layers[-1]
        return self._replace_last(data, head, kernel=(layer.kernel * scale).astype(np.float32),
                                  bias=(layer.bias * scale).astype(np.float32))

    def _activation(self, node, data: Data, attrs) -> Data:
        name = _DENSE_ACTIVATIONS[node.op_type]
        if node.op_type == "Softmax":
            axis = attrs.get("axis", -1 if self.opset >= 13 else 1) % len(data.axes)
            if axis != len(data.axes) - 1 or (self.opset < 13 and len(data.axes) > 2):
                self.fail(node, "softmax over an axis other than the features")
        data, head = self._open_dense(node, data)
        return self._replace_last(data, head, activation=name)

    # -- resolution into layers ----------------------------------------------------------------

    def _resolve(self, parts: tuple, where: str) -> tuple:
        """``(layers, is_sequence)`` computing the concatenation of ``parts``."""
        if len(parts) == 1 and isinstance(parts[0], InputPart):
            return [], True
        if len(parts) == 1 and isinstance(parts[0], Head):
            layers, sequence = self._resolve(parts[0].source, where)
            return layers + [dataclasses.replace(layer) for layer in parts[0].layers], sequence
        if parts and all(isinstance(p, RnnOut) for p in parts) and len({id(p.rnn) for p in parts}) == 1:
            return self._resolve_recurrent(parts, where)
        raise UnsupportedLayerError(
            f"{self.source}: {where}: combines {', '.join(self._part_text(p) for p in parts)}; only a chain of "
            "layers (each reading the whole output of the previous one) is supported"
        )

    def _part_text(self, part) -> str:
        if isinstance(part, InputPart):
            return "the model input"
        if isinstance(part, RnnOut):
            return f"direction {part.direction} of '{part.rnn.name}' ({part.when})"
        return f"a dense head over {len(part.source)} part(s)"

    def _resolve_recurrent(self, parts: tuple, where: str) -> tuple:
        rnn = parts[0].rnn
        whens = {p.when for p in parts}
        directions = [p.direction for p in parts]
        if "cell" in whens:
            raise UnsupportedLayerError(f"{self.source}: {where}: uses the cell state c_n of '{rnn.name}'; only hidden "
                                        "outputs (out or h_n) are supported")
        if "partial" in whens:
            return self._resolve_timestep(parts, where)
        if len(whens) != 1:
            raise UnsupportedLayerError(f"{self.source}: {where}: mixes per-timestep and final outputs of '{rnn.name}'")
        sequence = whens.pop() == "seq"
        before, before_sequence = self._resolve(rnn.source, f"the input of '{rnn.name}'")
        if not before_sequence:
            raise UnsupportedLayerError(f"{self.source}: '{rnn.name}' reads a single vector, not a sequence")
        if rnn.direction == "forward" and directions == [0]:
            return before + [rnn.layer(0, sequence, False, rnn.name)], sequence
        if rnn.direction == "reverse" and directions == [0]:
            if sequence:
                raise UnsupportedLayerError(
                    f"{self.source}: {where}: uses the per-timestep output of reverse-direction '{rnn.name}' in input "
                    "order; a go_backwards layer's sequence is in reading order, so only its final output is supported"
                )
            return before + [rnn.layer(0, False, True, rnn.name)], False
        if rnn.direction == "bidirectional" and directions == [0, 1]:
            forward = rnn.layer(0, sequence, False, f"{rnn.name}/forward")
            backward = rnn.layer(1, sequence, True, f"{rnn.name}/backward")
            return before + [BidirectionalLayer(rnn.name, forward, backward, "concat")], sequence
        raise UnsupportedLayerError(
            f"{self.source}: {where}: uses direction(s) {directions} of {rnn.direction} '{rnn.name}'; a bidirectional "
            "layer's output must be its forward and backward halves concatenated, in that order"
        )

    def _resolve_timestep(self, parts: tuple, where: str) -> tuple:
        """One timestep of a layer's output sequence at which some direction has read only part of
        the window: PyTorch's ``out[:, -1]`` after a bidirectional layer (its backward half has
        read only the last step there) or ``out[:, 0]``. Exact as the whole sequence followed by a
        :class:`TimestepLayer`, which makes the network a window model."""
        rnn = parts[0].rnn
        directions = [p.direction for p in parts]
        origin = next(p.origin for p in parts if p.when == "partial")
        if rnn.direction == "reverse" or not ({p.when for p in parts} <= {"final", "partial"}):
            raise UnsupportedLayerError(
                f"{self.source}: {origin}: takes a timestep of '{rnn.name}' at which it has read only part of the "
                "sequence; supported for forward and bidirectional layers (out[:, -1] or out[:, 0])"
            )
        before, before_sequence = self._resolve(rnn.source, f"the input of '{rnn.name}'")
        if not before_sequence:
            raise UnsupportedLayerError(f"{self.source}: '{rnn.name}' reads a single vector, not a sequence")
        index = -1 if next(p for p in parts if p.direction == 0).when == "final" else 0
        if rnn.direction == "forward" and directions == [0]:
            layers = [rnn.layer(0, True, False, rnn.name)]
        elif rnn.direction == "bidirectional" and directions == [0, 1]:
            forward = rnn.layer(0, True, False, f"{rnn.name}/forward")
            backward = rnn.layer(1, True, True, f"{rnn.name}/backward")
            layers = [BidirectionalLayer(rnn.name, forward, backward, "concat")]
        else:
            raise UnsupportedLayerError(
                f"{self.source}: {where}: uses direction(s) {directions} of {rnn.direction} '{rnn.name}'; a bidirectional "
                "layer's output must be its forward and backward halves concatenated, in that order"
            )
        step = TimestepLayer(f"{rnn.name}/timestep{index}", index, layers[-1].output_size)
        return before + layers + [step], False

    # -- the network ---------------------------------------------------------------------------

    def _network(self, output) -> Network:
        name = self.graph.output[0].name
        if not isinstance(output, Data):
            raise UnsupportedLayerError(f"{self.source}: output '{name}' is not computed from the model input")
        if self.rnn_count == 0:
            raise UnsupportedLayerError(f"{self.source}: no LSTM or GRU node found; edgelstm converts recurrent models")
        if "stack" in output.roles:
            raise UnsupportedLayerError(f"{self.source}: output '{name}' still has a direction/layer axis "
                                        f"{self._axes_text(output)}; expected (batch, [time,] features)")
        layers, sequence = self._resolve(output.parts, f"output '{name}'")
        roles = [r for r in output.roles if r != "unit"]
        expected = (["batch", "time", "feat"], ["time", "batch", "feat"]) if sequence else (["batch", "feat"],)
        if roles not in [list(e) for e in expected]:
            raise UnsupportedLayerError(f"{self.source}: output '{name}' has axes {self._axes_text(output)}; "
                                        "expected (batch, features) or (batch, time, features)")
        notes = [f"imported from ONNX (producer {self.model.producer_name or '?'} "
                 f"{self.model.producer_version or ''}, opset {self.opset})".replace(" ,", ",")]
        if self.time_tag == 0:
            notes.append(f"the model reads time-major input (time, batch, features) on '{self.input_name}'; "
                         "edgelstm feeds (batch, time, features)")
        if sequence and roles[0] == "time":
            notes.append(f"the model's output '{name}' is time-major (time, batch, features); edgelstm's is "
                         "(batch, time, features)")
        if self.state_inputs:
            notes.append(f"initial states come from graph input(s) {', '.join(repr(n) for n in self.state_inputs)}; "
                         "the converted step model starts from a zero state and carries its state between calls itself")
        if len(output.roles) != len(roles):
            notes.append(f"output '{name}' has extra size-1 axes {self._axes_text(output)}; edgelstm drops them")
        feat = self.input_axes[2].size
        n_features = int(feat) if _is_int(feat) else layers[0].input_size
        network = Network(n_features=n_features, layers=layers, source_format="onnx", source_name=self.source,
                          notes=notes)
        if network.mode == "window":
            static = int(self.time_size) if _is_int(self.time_size) else None
            network.window = self.window or static
            if self.window and static and self.window != static:
                network.notes.append(f"the graph fixes the time dimension to {static} steps; window {self.window} "
                                     "was given and is used")
        return network.validate()


# ----------------------------------------------------------------------------------------------
# helpers


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


def load_onnx(path: Path, window: int | None = None) -> Network:
    """Import an ONNX file (a PyTorch-exported LSTM/GRU model) into a validated Network.

    ``window``: for window networks (a bidirectional LSTM/GRU), the window length when the
    graph's time dimension is not fixed (overrides a fixed one).
    """
    path = Path(path)
    model = read_model(path)
    try:
        return _Lowering(model, path.name, window).run()
    except (ModelFormatError, UnsupportedLayerError):
        raise
    except Exception as exc:  # a graph that parsed but holds values no exporter writes: damaged
        raise ModelFormatError(f"{path.name}: the ONNX graph holds inconsistent values ({type(exc).__name__}: {exc}); "
                               "the file may be damaged") from None


__all__ = ["load_onnx", "read_model", "SUPPORTED_OPS"]
