"""Step a model file: normalise and quantize the reading, invoke, feed the state back.

One class per engine, all with the same small interface:

- ``set_normalization(offset, scale)``: readings arrive in raw sensor units; the stepper
  folds ``(x - offset) / scale`` and its input quantization into one multiply-add.
- ``step(x)`` takes ``(batch, features)`` and returns the float32 output ``(batch, outputs)``
  as a read-only view of a buffer the next step overwrites (copy it to keep it).
- ``state``: the model's state tensors as held (int8 for int8 models), arrays that ``step``
  updates in place; ``state_names`` names them, ``state_quant`` gives each one's
  ``(scale, zero_point)`` (``None`` for float). ``reset(rows)`` zeroes all or some streams.

:class:`TFLiteStepper` is the hot path. It binds numpy views onto the interpreter's own
input and output buffers once, at load, so a step is: one fused normalise-and-quantize
into the input buffer, ``Invoke``, a copy of each state output onto its state input (int8
to int8: the converter gave both ends one scale and zero point), and one dequantize of
``y`` into a preallocated buffer. Nothing is looked up by name; the one allocation is the
small temporary of the fancy-indexed state copy (a gather of the state bytes).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

import numpy as np

from .interpreters import tflite_interpreter_module

# An absurd reading (1e30) overflows float32 while it is normalised and measured; it is refused
# right after (StreamRuntime's max_deviation), so numpy's overflow warnings from here say nothing.
warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning, module=__name__)


def quantize_into(out: np.ndarray, values: np.ndarray, scale: float, zero_point: int) -> None:
    """Write ``round(values / scale) + zero_point`` (saturated) into an integer buffer."""
    info = np.iinfo(out.dtype)
    np.copyto(out, np.clip(np.rint(np.asarray(values, np.float64) / scale) + zero_point, info.min, info.max), casting="unsafe")


try:  # the clip ufunc itself: np.clip's Python wrapper costs a microsecond per call
    from numpy._core.umath import clip as _clip
except ImportError:  # numpy < 2
    from numpy.core.umath import clip as _clip


def arena_view(arrays: list, dtype=np.uint8):
    """A view over the interpreter memory that holds ``arrays``, and each array's offsets in it,
    in elements of ``dtype`` (bytes by default).

    The interpreter keeps its tensors in one arena, so a view over the span they cover lets
    one fancy-indexed numpy call read or write all of them. Returns None when the arrays are
    not C-contiguous, not in one compact region, or (for a wider ``dtype``) not aligned to it.
    The caller must keep the arrays (and so the interpreter) alive while it uses the view.
    """
    import ctypes

    address = lambda a: a.__array_interface__["data"][0]  # noqa: E731
    if not arrays or not all(a.flags.c_contiguous for a in arrays):
        return None
    start = min(address(a) for a in arrays)
    end = max(address(a) + a.nbytes for a in arrays)
    size = np.dtype(dtype).itemsize
    if end - start > (1 << 24) or any((address(a) - start) % size or a.nbytes % size for a in arrays):
        return None
    ctype = np.ctypeslib.as_ctypes_type(np.dtype(dtype))
    view = np.ctypeslib.as_array((ctype * ((end - start) // size)).from_address(start))
    offsets = [np.arange(a.nbytes // size, dtype=np.intp) + (address(a) - start) // size for a in arrays]
    return view, offsets


#: Above this many state values per tensor, one copy per tensor beats one indexed copy (see arena_copier).
ARENA_VALUES_PER_TENSOR = 256


def arena_copier(destinations: list, sources: list):
    """One call that copies every ``sources[k]`` onto ``destinations[k]``.

    One ``np.copyto`` per state tensor costs about 0.27 us each here; one fancy-indexed
    assignment over :func:`arena_view` costs about 0.45 us for ten tensors. The indexed copy
    goes byte by byte, so it only pays for small states: the C-MAPSS stream model's 18 tensors
    at 256 streams (73,728 bytes) took 207 us indexed against 25 us as 18 copies (1 stream: 2 us
    against 20 us). Per-tensor copies therefore when the state exceeds
    :data:`ARENA_VALUES_PER_TENSOR` values per tensor, or is not in one compact region. The index
    counts values, not bytes, when every tensor has one dtype: a float32 state (the dynamic-range
    model of the demo's LSTM 128/64, ten tensors, 1,536 bytes) was copied byte by byte in 4.3 us,
    0.43x of its bare ``Invoke``.
    """
    pairs = list(zip(destinations, sources))
    arrays = [a for pair in pairs for a in pair]
    dtypes = {a.dtype for a in arrays}
    dtype = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.uint8)
    values = sum(int(dst.nbytes) for dst, _ in pairs) // dtype.itemsize
    found = arena_view(arrays, dtype) if values <= ARENA_VALUES_PER_TENSOR * max(len(pairs), 1) else None
    if found is None and dtype.itemsize > 1:  # not aligned to the wider type: bytes, as before
        found = arena_view(arrays) if values * dtype.itemsize <= ARENA_VALUES_PER_TENSOR * max(len(pairs), 1) else None
    if found is None:

        def copy_each():
            for dst, src in pairs:
                np.copyto(dst, src)

        return copy_each
    arena, offsets = found
    dst_index = np.concatenate(offsets[0::2])
    src_index = np.concatenate(offsets[1::2])

    def copy_all():
        arena[dst_index] = arena[src_index]

    copy_all.keep_alive = pairs  # the views own references to the interpreter's buffers
    return copy_all


def state_order(names) -> list:
    """State input names in model order: ``h_0, c_0`` (or ``c_0_0, c_0_1, ...``; a residual int8
    cell adds ``c_0_lo`` after ``c_0``), ``h_1``, ..."""
    states = [n for n in names if n[:2] in ("h_", "c_") and not n.endswith("_out")]

    def key(name):  # a residual cell's c_k[_j]_lo follows its c_k[_j]
        residual = name.endswith("_lo")
        parts = (name[:-3] if residual else name).split("_")
        return (int(parts[1]), parts[0] != "h", int(parts[2]) if len(parts) > 2 else 0, residual)

    return sorted(states, key=key)


def open_interpreter(model_path, threads: int = 1, interpreter: str | None = None, delegates=None, batch: int | None = None):
    """A TFLite interpreter for ``model_path`` with every signature input's batch dimension
    resized to ``batch`` and tensors allocated; returns ``(engine, engine version, interpreter)``.

    The resize happens before any signature runner exists: a runner would pin the tensors."""
    engine, module = tflite_interpreter_module(interpreter)
    version = getattr(module, "__version__", None) or _package_version(engine)
    kwargs = {"model_path": str(model_path), "num_threads": threads}
    if delegates:
        kwargs["experimental_delegates"] = delegates
    opened = module.Interpreter(**kwargs)
    if batch is not None:
        inputs = next(iter(opened._get_full_signature_list().values()))["inputs"]  # name -> tensor index
        shapes = {d["index"]: d["shape"] for d in opened.get_tensor_details()}
        for index in inputs.values():
            shape = shapes[index]
            if int(shape[0]) != batch:
                opened.resize_tensor_input(index, [batch] + [int(v) for v in shape[1:]], strict=False)
    with _native_stderr_silenced():  # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate" here
        opened.allocate_tensors()
    return engine, version, opened


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send file descriptor 2 to /dev/null for the duration: native libraries' INFO lines go
    there, below Python (errors still arrive as Python exceptions, with their messages)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): leave it alone
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _Stepper:
    """What every stepper shares: state bookkeeping and the float view of the state."""

    state_names: list
    state: list
    state_quant: list

    def reset(self, rows=None) -> None:
        for array, quant in zip(self.state, self.state_quant):
            zero = 0 if quant is None else quant[1]
            if rows is None:
                array[...] = zero
            else:
                array[rows] = zero

    def state_to_float(self, k: int, values: np.ndarray) -> np.ndarray:
        quant = self.state_quant[k]
        if quant is None:
            return np.array(values, np.float32)
        return ((values.astype(np.float32) - quant[1]) * np.float32(quant[0])).astype(np.float32)

    def state_from_float(self, k: int, values: np.ndarray, rows=None) -> None:
        target = self.state[k] if rows is None else self.state[k][rows]
        quant = self.state_quant[k]
        buffer = np.empty(target.shape, target.dtype)
        if quant is None:
            buffer[...] = values
        else:
            quantize_into(buffer, values, *quant)
        if rows is None:
            self.state[k][...] = buffer
        else:
            self.state[k][rows] = buffer


class TFLiteStepper(_Stepper):
    """A TFLite step model driven through views on the interpreter's buffers."""

    def __init__(self, model_path, threads: int = 1, interpreter: str | None = None, delegates=None, batch: int | None = None,
                 output_copies: int = 1):
        """``output_copies``: how many offset copies of each output an integer ``y`` holds (the
        manifest entry's ``output_copies``; the converter's full-integer models of networks ending
        in a linear Dense layer): ``y`` is their mean, on a grid that many times finer than one."""
        self.engine, self.engine_version, self.interpreter = open_interpreter(model_path, threads, interpreter, delegates, batch)
        runner = self.interpreter.get_signature_runner()
        self.inputs = runner.get_input_details()
        self.outputs = runner.get_output_details()
        self.state_names = state_order(self.inputs)
        view = lambda details: self.interpreter.tensor(details["index"])()  # noqa: E731
        self._x = view(self.inputs["x"])
        self._y = view(self.outputs["y"])
        self.state = [view(self.inputs[n]) for n in self.state_names]
        self._state_out = [view(self.outputs[f"{n}_out"]) for n in self.state_names]
        self.state_quant = [
            tuple(self.inputs[n]["quantization"]) if self.inputs[n]["dtype"] != np.float32 else None
            for n in self.state_names
        ]
        for n in self.state_names:
            if self.inputs[n]["quantization"] != self.outputs[f"{n}_out"]["quantization"]:
                raise ValueError(
                    f"{model_path}: state '{n}' has different quantization at input and output; "
                    "convert the model with edgelstm, which ties them"
                )
        self.batch, self.n_features = (int(v) for v in self._x.shape)
        self.output_copies = int(output_copies)
        if self.output_copies < 1 or int(self._y.shape[1]) % self.output_copies or (
                self.output_copies > 1 and self._y.dtype == np.float32):
            raise ValueError(f"{model_path}: output 'y' of {self._y.shape[1]} {self._y.dtype} values cannot hold "
                             f"{self.output_copies} integer copies of each output")
        self.output_size = int(self._y.shape[1]) // self.output_copies
        x_scale = self.inputs["x"]["quantization"][0]
        self.x_token = self._x.dtype.kind == "i" and x_scale == 0  # an Embedding model: integer token ids
        self.x_quantized = self._x.dtype != np.float32 and not self.x_token
        self._copy_state = arena_copier(self.state, self._state_out)
        # a model that takes raw readings (the converter folded the normalisation into it) says
        # how far the normalised reading lies in its output "deviation" (summed squares; NaN when
        # the reading or y is not finite). The name is the converter's tflite_normalize.DEVIATION,
        # written out here: the runtime imports nothing from the converting side.
        self.takes_raw = "deviation" in self.outputs
        self._deviation = view(self.outputs["deviation"]).reshape(-1) if self.takes_raw else None
        self._tmp = np.empty(self._x.shape, np.float32)
        # what step_within measures: the normalised reading, where the input is computed
        self._normalized_flat = (self._tmp if self.x_quantized else self._x).reshape(-1)
        if self.x_quantized:
            info = np.iinfo(self._x.dtype)
            self._x_low = np.full(self._x.shape, info.min, np.float32)
            self._x_high = np.full(self._x.shape, info.max, np.float32)
        self._y_float = None
        if self._y.dtype == np.float32:
            self._y_result = self._y.view()  # the interpreter's own output buffer, read-only
        else:  # dequantize through a 256-entry table indexed by the raw byte
            scale, zero = self.outputs["y"]["quantization"]
            raw = np.arange(256, dtype=np.uint8).view(np.int8).astype(np.float64)
            self._y_bytes = self._y.view(np.uint8)
            self._y_float = np.empty((self.batch, self.output_size), np.float32)
            self._y_result = self._y_float.view()
            self._y_copies = None
            if self.output_copies == 1:
                self._y_table = ((raw - zero) * scale).astype(np.float32) if self._y.dtype == np.int8 else None
            else:  # the copies as whole numbers, summed exactly, times scale / copies: the stream model's own arithmetic
                if self._y.dtype != np.int8:
                    raise ValueError(f"{model_path}: output copies need an int8 'y', not {self._y.dtype}")
                self._y_table = (raw - zero).astype(np.float32)
                self._y_copies = np.empty(self._y.shape, np.float32)
                self._y_sum = np.kron(np.eye(self.output_size), np.ones((self.output_copies, 1))).astype(np.float32)
                self._y_factor = np.float32(float(scale) / self.output_copies)
        self._y_result.flags.writeable = False
        # Interpreter.invoke() first checks that no numpy view on its buffers is alive; ours
        # are, on purpose, and stay valid because the tensors are never reallocated after this.
        self._invoke = getattr(getattr(self.interpreter, "_interpreter", None), "Invoke", None) or self.interpreter.invoke
        self.set_normalization(np.zeros(self.n_features), np.ones(self.n_features))
        self.reset()

    def set_normalization(self, offset, scale) -> None:
        """Readings arrive in raw units: ``x = (raw - offset) * factor`` (then quantized, for an
        integer ``x``). Subtract first: sensor values such as 1590 +- 5 would lose their
        digits in float32 if ``raw * a + b`` were computed instead."""
        if self.x_token:
            self._write_x = self._copy_x
            return
        offset = np.asarray(offset, np.float64)
        factor = 1.0 / np.asarray(scale, np.float64)
        if self.x_quantized:
            x_scale, x_zero = self.inputs["x"]["quantization"]
            factor = factor / x_scale
            self._x_zero = np.float32(x_zero)
        self._offset = offset.astype(np.float32)
        self._factor = factor.astype(np.float32)
        identity = not self.x_quantized and np.all(offset == 0.0) and np.all(factor == 1.0)
        self._write_x = self._copy_x if identity else (self._quantize_x if self.x_quantized else self._normalise_x)

    def _copy_x(self, x) -> None:
        self._x[...] = x

    def _normalise_x(self, x) -> None:
        np.subtract(x, self._offset, out=self._x)
        np.multiply(self._x, self._factor, out=self._x)

    def _quantize_x(self, x) -> None:
        tmp = self._tmp
        np.subtract(x, self._offset, out=tmp)
        np.multiply(tmp, self._factor, out=tmp)
        self._finish_quantize()

    def _finish_quantize(self) -> None:
        tmp = self._tmp
        np.add(tmp, self._x_zero, out=tmp)
        _clip(tmp, self._x_low, self._x_high, out=tmp)
        np.rint(tmp, out=self._x, casting="unsafe")

    @property
    def normalized_unit(self) -> float | None:
        """How many normalised units one unit of :meth:`step_within`'s distance is (the input
        grid's scale for an integer ``x``); ``None`` when this stepper cannot measure it."""
        if self.takes_raw:
            return 1.0
        if self.x_token or self._write_x is self._copy_x:
            return None
        return float(self.inputs["x"]["quantization"][0]) if self.x_quantized else 1.0

    def step_within(self, x: np.ndarray, limit2: float):
        """:meth:`step`, unless the normalised readings' summed squares exceed ``limit2`` (in
        :attr:`normalized_unit` squared) or are not finite: then nothing runs, no state
        changes, and ``None`` returns. The check is one dot product on the normalisation's own
        result, the same cost as a finiteness check of the raw reading.

        A model that takes raw readings computes the normalised reading and its summed squares
        itself: the reading is copied in, the model runs, and its new state is fed back only
        when that sum is within ``limit2`` (a refused reading leaves the state as it was)."""
        if self.takes_raw:
            self._x[...] = x
            self._invoke()
            if not self._deviation[0] <= limit2:
                return None
            self._copy_state()
            if self._y_float is not None:
                self._dequantize_y()
            return self._y_result
        if self.x_quantized:
            tmp = self._tmp
            np.subtract(x, self._offset, out=tmp)
            np.multiply(tmp, self._factor, out=tmp)
            flat = self._normalized_flat
            if not flat.dot(flat) <= limit2:  # an absurd reading overflows to inf: refused too
                return None
            np.add(tmp, self._x_zero, out=tmp)
            _clip(tmp, self._x_low, self._x_high, out=tmp)
            np.rint(tmp, out=self._x, casting="unsafe")
        else:
            np.subtract(x, self._offset, out=self._x)
            np.multiply(self._x, self._factor, out=self._x)
            flat = self._normalized_flat
            if not flat.dot(flat) <= limit2:
                return None
        self._invoke()
        self._copy_state()
        if self._y_float is not None:
            self._dequantize_y()
        return self._y_result

    def step(self, x: np.ndarray) -> np.ndarray:
        """One step of every stream: ``x`` is ``(batch, features)``; returns ``y`` (read-only,
        overwritten by the next step)."""
        self._write_x(x)
        self._invoke()
        self._copy_state()
        if self._y_float is not None:
            self._dequantize_y()
        return self._y_result

    def _dequantize_y(self) -> None:
        into = self._y_float if self._y_copies is None else self._y_copies
        if self._y_table is not None:
            np.take(self._y_table, self._y_bytes, out=into)
        else:  # int16 output
            scale, zero = self.outputs["y"]["quantization"]
            np.multiply(self._y.astype(np.float32) - zero, scale, out=into)
        if self._y_copies is not None:  # the mean of each output's copies (tflite_output_copies)
            np.matmul(into, self._y_sum, out=self._y_float)
            np.multiply(self._y_float, self._y_factor, out=self._y_float)

    def invoke(self) -> None:
        """The bare interpreter call, for profiling the runtime's overhead against it."""
        self._invoke()

    def ops(self) -> list:
        """Builtin op names of the model in graph order (a delegate's own node is left out)."""
        seen = []
        for op in self.interpreter._get_ops_details():
            if op["op_name"] not in seen and op["op_name"] != "DELEGATE":
                seen.append(op["op_name"])
        return seen



def open_session(model_path, threads: int = 1) -> tuple:
    """An onnxruntime CPU session with ``threads`` intra-op threads; returns ``(version, session)``."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.__version__, onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


class OnnxStepper(_Stepper):
    """An ONNX step model (float32 or QDQ int8) run with onnxruntime; state kept as float32."""

    engine = "onnxruntime"

    def __init__(self, model_path, threads: int = 1, batch: int | None = None):
        self.engine_version, self.session = open_session(model_path, threads)
        inputs = {i.name: i for i in self.session.get_inputs()}
        declared = inputs["x"].shape[0]
        self.batch = batch or (declared if isinstance(declared, int) else 1)
        self.n_features = int(inputs["x"].shape[1])
        self.state_names = state_order(inputs)
        self.state = [np.zeros((self.batch, int(inputs[n].shape[1])), np.float32) for n in self.state_names]
        self.state_quant = [None] * len(self.state)
        self.output_size = int(self.session.get_outputs()[0].shape[1])
        self._output_names = ["y"] + [f"{n}_out" for n in self.state_names]
        self._feed = dict(zip(self.state_names, self.state))
        self._offset = np.zeros(self.n_features, np.float32)
        self._inv_scale = np.ones(self.n_features, np.float32)
        self.x_token = inputs["x"].type == "tensor(int64)"  # an Embedding model: integer token ids
        self._x = np.empty((self.batch, self.n_features), np.int64 if self.x_token else np.float32)
        self._feed["x"] = self._x

    def set_normalization(self, offset, scale) -> None:
        self._offset = np.asarray(offset, np.float32)
        self._inv_scale = (1.0 / np.asarray(scale, np.float64)).astype(np.float32)

    def step(self, x: np.ndarray) -> np.ndarray:
        if self.x_token:
            self._x[...] = x
        else:
            np.subtract(x, self._offset, out=self._x)
            np.multiply(self._x, self._inv_scale, out=self._x)
        outputs = self.session.run(self._output_names, self._feed)
        for array, value in zip(self.state, outputs[1:]):
            np.copyto(array, value)
        return outputs[0]



class NumpyStepper(_Stepper):
    """The float numpy reference as a backend: always available, slowest, the oracle."""

    engine = "numpy"

    def __init__(self, network, batch: int = 1):
        from edgelstm.model.reference import Reference

        self.engine_version = np.__version__
        self.reference = Reference(network)
        self.batch = batch
        self.n_features = network.n_features
        self.output_size = network.output_size
        self.state_names = network.state_names()
        self.state = self.reference.initial_state(batch)
        self.state_quant = [None] * len(self.state)
        self._offset = np.zeros(self.n_features, np.float32)
        self._scale = np.ones(self.n_features, np.float32)

    def set_normalization(self, offset, scale) -> None:
        self._offset = np.asarray(offset, np.float32)
        self._scale = np.asarray(scale, np.float32)

    def step(self, x: np.ndarray) -> np.ndarray:
        y, new_state = self.reference.step((np.asarray(x, np.float32) - self._offset) / self._scale, self.state)
        for array, value in zip(self.state, new_state):
            np.copyto(array, value)
        return y



def _package_version(engine: str) -> str | None:
    from importlib import metadata

    name = {"litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime", "tensorflow": "tensorflow-cpu"}.get(engine)
    try:
        return metadata.version(name) if name else None
    except metadata.PackageNotFoundError:
        return None
