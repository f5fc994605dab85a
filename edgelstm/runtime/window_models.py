"""Run a window model: the last ``T`` readings of each stream in, the model's output out.

Window models (Bidirectional, autoencoders, Conv1D front ends; see
:mod:`edgelstm.convert.export.window_graph`) have no state to carry: the runtime keeps each
stream's last ``T`` readings in a ring and hands the whole window to :meth:`run` at every
step. One class per engine, the same small interface:

- ``set_normalization(offset, scale)``: windows arrive in raw sensor units.
- ``run(windows)`` takes ``(batch, T, features)`` (token models: ids) and returns the float32
  output ``(batch, ...)`` (a buffer the next call overwrites), plus ``normalized``: the
  window as the model saw it (for an autoencoder's reconstruction error).
- ``state``, ``state_names``, ``state_quant`` are empty: nothing to feed back.
"""

from __future__ import annotations

import numpy as np

from .steppers import TFLiteStepper, open_interpreter, open_session


class _WindowModel:
    state: list = []
    state_names: list = []
    state_quant: list = []

    def reset(self, rows=None) -> None:
        """Nothing to reset: the window is the runtime's."""

    def set_normalization(self, offset, scale) -> None:
        self._offset = np.asarray(offset, np.float32)
        self._inv_scale = (1.0 / np.asarray(scale, np.float64)).astype(np.float32)

    def _normalise(self, windows, out) -> None:
        np.subtract(windows, self._offset, out=out)
        np.multiply(out, self._inv_scale, out=out)


class TFLiteWindowModel(_WindowModel):
    """A TFLite window model (float, or int8 with float or integer boundary)."""

    def __init__(self, model_path, threads: int = 1, interpreter: str | None = None, delegates=None, batch: int | None = None):
        self.engine, self.engine_version, self.interpreter = open_interpreter(model_path, threads, interpreter, delegates, batch)
        runner = self.interpreter.get_signature_runner()
        self.inputs = runner.get_input_details()
        self.outputs = runner.get_output_details()
        view = lambda details: self.interpreter.tensor(details["index"])()  # noqa: E731
        self._x = view(self.inputs["x"])
        self._y = view(self.outputs["y"])
        self.batch, self.window = int(self._x.shape[0]), int(self._x.shape[1])
        self.x_token = self._x.ndim == 2
        self.n_features = 1 if self.x_token else int(self._x.shape[2])
        self.output_shape = tuple(int(v) for v in self._y.shape[1:])
        self.x_quantized = self._x.dtype != np.float32 and not self.x_token
        self.normalized = np.zeros((self.batch, self.window, self.n_features), np.float32)
        self._y_float = np.empty(self._y.shape, np.float32)
        self._invoke = getattr(getattr(self.interpreter, "_interpreter", None), "Invoke", None) or self.interpreter.invoke
        self.set_normalization(np.zeros(self.n_features), np.ones(self.n_features))

    def run(self, windows: np.ndarray) -> np.ndarray:
        if self.x_token:
            np.copyto(self._x, windows.reshape(self._x.shape), casting="unsafe")
        else:
            self._normalise(windows, self.normalized)
            if self.x_quantized:
                scale, zero = self.inputs["x"]["quantization"]
                info = np.iinfo(self._x.dtype)
                np.copyto(self._x, np.clip(np.rint(self.normalized / scale) + zero, info.min, info.max), casting="unsafe")
            else:
                self._x[...] = self.normalized
        self._invoke()
        if self._y.dtype == np.float32:
            np.copyto(self._y_float, self._y)
        else:
            scale, zero = self.outputs["y"]["quantization"]
            np.multiply(self._y.astype(np.float32) - zero, scale, out=self._y_float)
        return self._y_float

    def invoke(self) -> None:
        self._invoke()

    ops = TFLiteStepper.ops  # builtin op names in graph order: the same question of the same interpreter


class OnnxWindowModel(_WindowModel):
    """An ONNX window model (float32 or QDQ int8) run with onnxruntime."""

    engine = "onnxruntime"

    def __init__(self, model_path, threads: int = 1, batch: int | None = None):
        self.engine_version, self.session = open_session(model_path, threads)
        x = self.session.get_inputs()[0]
        self.batch = batch or 1
        self.window = int(x.shape[1])
        self.x_token = x.type == "tensor(int64)"
        self.n_features = 1 if self.x_token else int(x.shape[2])
        self.output_shape = tuple(int(v) for v in self.session.get_outputs()[0].shape[1:])
        self.normalized = np.zeros((self.batch, self.window, self.n_features), np.float32)
        self._ids = np.zeros((self.batch, self.window), np.int64)
        self.set_normalization(np.zeros(self.n_features), np.ones(self.n_features))

    def run(self, windows: np.ndarray) -> np.ndarray:
        if self.x_token:
            np.copyto(self._ids, windows.reshape(self._ids.shape), casting="unsafe")
            return self.session.run(["y"], {"x": self._ids})[0]
        self._normalise(windows, self.normalized)
        return self.session.run(["y"], {"x": self.normalized})[0]


class NumpyWindowModel(_WindowModel):
    """The float numpy reference over the window: always available, the oracle."""

    engine = "numpy"

    def __init__(self, network, batch: int = 1):
        from edgelstm.model.reference import forward_sequence

        self.engine_version = np.__version__
        self._forward = forward_sequence
        self.network = network
        self.batch = batch
        self.window = int(network.window)
        self.x_token = network.input_kind == "token"
        self.n_features = network.n_features
        length = network.output_length()
        self.output_shape = (network.output_size,) if length is None else (length, network.output_size)
        self.normalized = np.zeros((batch, self.window, self.n_features), np.float32)
        self.set_normalization(np.zeros(self.n_features), np.ones(self.n_features))

    def run(self, windows: np.ndarray) -> np.ndarray:
        if self.x_token:
            return self._forward(self.network, np.asarray(windows).reshape(self.batch, self.window).astype(np.int64))
        self._normalise(windows, self.normalized)
        return self._forward(self.network, self.normalized)
