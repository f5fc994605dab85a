"""The exporters' glue on data tensors: Transpose, Squeeze, Unsqueeze, Expand, Reshape, Gather, Slice, Concat."""

from __future__ import annotations

import numpy as np

from .values import Axis, Data, Dim, Head, Known, Opaque, RnnOut, _DENSE_ACTIVATIONS, _group_axes, _int_size, _is_int


class _Layout:
    """The exporters' glue on data tensors: Transpose, Squeeze, Unsqueeze, Expand, Reshape, Gather, Slice, Concat. A
    part of :class:`~.lowering._Lowering`."""

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
