"""Constants and shape arithmetic folded with numpy; values derived from zero states and state inputs."""

from __future__ import annotations

import numpy as np

from edgelstm.errors import ModelFormatError, UnsupportedLayerError

from .values import (
    Data, Known, Opaque, StateInput, Uniform, _arith, _is_int, _numpy_dtype, _tensor_scalar, _uniform_value
)


class _Folding:
    """Constants and shape arithmetic folded with numpy; values derived from zero states and state inputs. A part of
    :class:`~.lowering._Lowering`."""

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
