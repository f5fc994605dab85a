"""Step a model file: quantize the normalised input, invoke, feed the state back.

One class per engine, all with the same small interface:

- ``step(x)`` takes normalised float32 ``(batch, features)`` and returns float32 ``(batch, outputs)``;
- ``reset()`` zeroes the state; ``get_state()`` / ``set_state()`` exchange float32 arrays.

:class:`TFLiteStepper` is the hot path. It binds numpy views onto the interpreter's own
input and output buffers once, when the model is loaded, so a step is: one fused
quantize into the input buffer, ``Invoke``, a copy of each state output onto its state
input (int8 to int8: the converter gave both ends one scale and zero point), and one
dequantize of ``y``. Nothing is looked up by name and nothing is allocated per step.
"""

from __future__ import annotations

import numpy as np

from .interpreters import tflite_interpreter_module


def quantize_into(out: np.ndarray, values: np.ndarray, scale: float, zero_point: int) -> None:
    """Write ``round(values / scale) + zero_point`` (saturated) into an integer buffer."""
    info = np.iinfo(out.dtype)
    np.copyto(out, np.clip(np.rint(values / scale) + zero_point, info.min, info.max), casting="unsafe")


def state_order(names) -> list:
    """State input names in model order: ``h_0, c_0`` (or ``c_0_0, c_0_1, ...``), ``h_1``, ..."""
    states = [n for n in names if n[:2] in ("h_", "c_") and not n.endswith("_out")]

    def key(name):
        parts = name.split("_")
        return (int(parts[1]), parts[0] != "h", int(parts[2]) if len(parts) > 2 else 0)

    return sorted(states, key=key)


class TFLiteStepper:
    """A TFLite step model driven through views on the interpreter's buffers."""

    def __init__(self, model_path, threads: int = 1, interpreter: str | None = None, delegates=None):
        self.engine, module = tflite_interpreter_module(interpreter)
        kwargs = {"model_path": str(model_path), "num_threads": threads}
        if delegates:
            kwargs["experimental_delegates"] = delegates
        self.interpreter = module.Interpreter(**kwargs)
        self.interpreter.allocate_tensors()
        runner = self.interpreter.get_signature_runner()
        self.inputs = runner.get_input_details()
        self.outputs = runner.get_output_details()
        self.state_names = state_order(self.inputs)
        self.quantized = self.inputs["x"]["dtype"] != np.float32
        view = lambda details: self.interpreter.tensor(details["index"])()  # noqa: E731
        self._x = view(self.inputs["x"])
        self._y = view(self.outputs["y"])
        self._state_in = [view(self.inputs[n]) for n in self.state_names]
        self._state_out = [view(self.outputs[f"{n}_out"]) for n in self.state_names]
        self._x_scale, self._x_zero = self.inputs["x"]["quantization"]
        self._y_scale, self._y_zero = self.outputs["y"]["quantization"]
        self._tied = [
            self.inputs[n]["quantization"] == self.outputs[f"{n}_out"]["quantization"] for n in self.state_names
        ]
        # Interpreter.invoke() first checks that no numpy view on its buffers is alive; ours
        # are, on purpose, and stay valid because tensors are never reallocated.
        self._invoke = getattr(self.interpreter, "_interpreter", self.interpreter)
        self._invoke = getattr(self._invoke, "Invoke", self.interpreter.invoke)
        self.batch = self._x.shape[0]
        self.reset()

    def step(self, x: np.ndarray) -> np.ndarray:
        if self.quantized:
            quantize_into(self._x, x, self._x_scale, self._x_zero)
        else:
            np.copyto(self._x, x)
        self._invoke()
        for k, (src, dst) in enumerate(zip(self._state_out, self._state_in)):
            if self._tied[k]:
                np.copyto(dst, src)
            else:
                self._set_state_tensor(k, self._dequantize(self.outputs[f"{self.state_names[k]}_out"], src))
        if self.quantized:
            return (self._y.astype(np.float32) - self._y_zero) * np.float32(self._y_scale)
        return self._y.copy()

    def _dequantize(self, details, values):
        scale, zero = details["quantization"]
        if values.dtype == np.float32:
            return values.copy()
        return (values.astype(np.float32) - zero) * np.float32(scale)

    def _set_state_tensor(self, k: int, values: np.ndarray) -> None:
        details = self.inputs[self.state_names[k]]
        if self._state_in[k].dtype == np.float32:
            np.copyto(self._state_in[k], values)
        else:
            quantize_into(self._state_in[k], values, *details["quantization"])

    def reset(self) -> None:
        for k in range(len(self.state_names)):
            self._set_state_tensor(k, np.zeros(self._state_in[k].shape, np.float32))

    def get_state(self) -> list:
        return [self._dequantize(self.inputs[n], self._state_in[k]) for k, n in enumerate(self.state_names)]

    def set_state(self, state: list) -> None:
        for k, values in enumerate(state):
            self._set_state_tensor(k, np.asarray(values, np.float32))

    def get_raw_state(self) -> list:
        """State exactly as held (int8 for int8 models): bit-exact snapshots."""
        return [s.copy() for s in self._state_in]

    def set_raw_state(self, state: list) -> None:
        for dst, src in zip(self._state_in, state):
            np.copyto(dst, src)

    def ops(self) -> list:
        """Builtin op names of the model in graph order (a delegate's own node is left out)."""
        seen = []
        for op in self.interpreter._get_ops_details():
            if op["op_name"] not in seen and op["op_name"] != "DELEGATE":
                seen.append(op["op_name"])
        return seen


class OnnxStepper:
    """An ONNX step model (float32 or QDQ int8) run with onnxruntime."""

    engine = "onnxruntime"

    def __init__(self, model_path, threads: int = 1):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.state_names = state_order(inputs)
        self.batch = int(inputs["x"].shape[0])
        self._output_names = ["y"] + [f"{n}_out" for n in self.state_names]
        self._shapes = [tuple(inputs[n].shape) for n in self.state_names]
        self._feed = {}
        self.reset()

    def step(self, x: np.ndarray) -> np.ndarray:
        self._feed["x"] = np.asarray(x, np.float32)
        outputs = self.session.run(self._output_names, self._feed)
        for name, value in zip(self.state_names, outputs[1:]):
            self._feed[name] = value
        return outputs[0]

    def reset(self) -> None:
        for name, shape in zip(self.state_names, self._shapes):
            self._feed[name] = np.zeros(shape, np.float32)

    def get_state(self) -> list:
        return [self._feed[n].copy() for n in self.state_names]

    def set_state(self, state: list) -> None:
        for name, values in zip(self.state_names, state):
            self._feed[name] = np.asarray(values, np.float32).copy()

    get_raw_state = get_state
    set_raw_state = set_state
