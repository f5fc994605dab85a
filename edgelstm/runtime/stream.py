"""The streaming runtime: one reading per call, state kept between calls, many streams at once.

``edgelstm.load(bundle)`` returns a :class:`StreamRuntime`. Each ``step(x)`` takes one
reading per stream in raw sensor units, applies the manifest's normalisation, runs one
timestep of the step model and returns the outputs. The recurrent state stays inside the
model's buffers (int8 for int8 models) from one call to the next.

Streams: ``streams=K`` steps K independent streams (K machines) in one call. The step
model's batch dimension is resized to K when it is loaded, so one ``Invoke`` serves all of
them; each stream's state is one row of the state tensors.

Bad readings (wrong feature count, not numbers, NaN or Inf) raise :class:`InputError` by
default (``on_bad_input="error"``). ``"skip"`` drops the reading: that stream's state is
left exactly as it was and its output is NaN. ``"hold"`` replaces each bad value by the
stream's last good value of that feature (a stream with no good reading yet is skipped).
A rejected reading never changes a stream's state.

Window mode (models trained on fixed windows; the manifest's ``window``): a ring buffer
keeps each stream's last N readings and every step runs the model over them from a
fresh state; until a stream has N readings its output is NaN. Window models
(Bidirectional, autoencoders, Conv1D front ends: the manifest's network ``mode`` is
``window``) take the whole ring in one call; an autoencoder's output is its reconstruction
error over the window (the anomaly score, mean squared error in normalised units), the
reconstruction itself stays in ``runtime.reconstruction``.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from .bundle import Bundle
from edgelstm.errors import BackendUnavailableError, BundleError, InputError, ModelFileError
from .interpreters import available_backends, tflite_interpreter_module

from math import isfinite as _isfinite

BAD_INPUT_POLICIES = ("error", "skip", "hold")
#: Default bound of a plausible reading, in calibration standard deviations from the calibration
#: mean. Far beyond any real sensor excursion (a C-MAPSS engine at failure is within 10), far
#: below what breaks a float32 model (1e30).
MAX_DEVIATION = 1000.0
#: A float model's state is checked for non-finite values every this many steps (and whenever
#: an output is not finite).
STATE_CHECK_EVERY = 64
#: After a state reset a stream's health is ``degraded`` for this many steps.
RESET_DEGRADED_STEPS = 100
TFLITE_BACKENDS = ("litert", "tflite_runtime", "tensorflow")
BACKENDS = TFLITE_BACKENDS + ("onnxruntime", "numpy")
#: Delegate libraries a manifest may name (loading a library runs its code: never a path from a file).
KNOWN_DELEGATES = frozenset({"libedgetpu.so.1", "libedgetpu.so.1.0"})
EDGETPU_HELP = (
    "install the Edge TPU runtime from Coral's apt repository (packages.cloud.google.com/apt, "
    "coral-edgetpu-stable): sudo apt-get install libedgetpu1-std; then compile the int8 model "
    "with edgetpu_compiler (`edgelstm inspect BUNDLE --target coral-usb` prints the command) and list "
    "the *_edgetpu.tflite file in the bundle: edgelstm bundle-add BUNDLE BUNDLE/step_int8_edgetpu.tflite"
)
#: What edgetpu_compiler appends to a model's name; such a file holds edgetpu-custom-op, which
#: only the libedgetpu delegate runs (a plain CPU interpreter cannot even load it).
EDGETPU_SUFFIX = "_edgetpu.tflite"


def load(bundle, backend: str = "auto", threads: int = 1, streams: int = 1, model: str | None = None,
         on_bad_input: str = "error", window: int | None = None, delegate: str | None = "target",
         monitor: bool = True, thresholds=None, max_deviation: float | None = MAX_DEVIATION) -> "StreamRuntime":
    """Open a bundle for streaming.

    ``backend``: ``auto`` (the best installed: LiteRT, tflite_runtime, tensorflow.lite,
    onnxruntime, numpy), or one of those names. ``model``: a file of the bundle or a
    quantization (``int8``, ``float32``...); default: the manifest's choice for its target.
    ``delegate``: ``"target"`` loads the Edge TPU delegate when the bundle's target names
    it, ``None`` never does, or a library name. With a delegate, a compiled
    ``*_edgetpu.tflite`` that ``edgelstm bundle-add`` listed in the manifest is preferred
    (batch 1: ``streams=1``); without one it is never chosen (only libedgetpu runs it). ``monitor``: watch input drift, int8
    saturation and stuck sensors (:mod:`edgelstm.runtime.monitor`; ``thresholds`` a
    :class:`~edgelstm.runtime.monitor.Thresholds`), reported by ``health()`` and ``events()``.
    ``max_deviation``: a reading value more than this many calibration standard deviations from
    the calibration mean is a bad reading (the ``on_bad_input`` policy applies): the model never saw
    anything like it, and one such value (1e30 passes a finiteness check) can poison a float
    state for ever. ``None`` turns the check off.
    """
    if on_bad_input not in BAD_INPUT_POLICIES:
        raise ValueError(f"on_bad_input must be one of {', '.join(BAD_INPUT_POLICIES)}")
    if streams < 1:
        raise ValueError("streams must be at least 1")
    opened = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    manifest = opened.manifest
    if delegate == "target":  # from the manifest: only a known library name, never a path
        delegate = manifest.get("target", {}).get("delegate")
        if delegate is not None and delegate not in KNOWN_DELEGATES:
            raise BundleError(
                f"{opened.path}: the manifest names delegate {delegate!r}; only {', '.join(sorted(KNOWN_DELEGATES))} "
                "are loaded from a manifest (pass delegate=... to load() to use another library)"
            )
    names = [backend] if backend != "auto" else [b for b in BACKENDS if b in available_backends()]
    errors = []
    for name in names:
        if name not in BACKENDS:
            raise ValueError(f"unknown backend '{name}'; choose auto or one of {', '.join(BACKENDS)}")
        entry = _choose_model(opened, name, model, delegate)
        if entry is None:
            errors.append(f"{name}: no suitable model in the bundle")
            continue
        try:
            stepper = _open_stepper(opened, name, entry, threads, streams, delegate)
            _check_against_manifest(opened, entry, stepper)
        except ImportError as exc:
            if backend != "auto":
                raise BackendUnavailableError(f"backend '{name}' is not installed here ({exc})") from None
            errors.append(f"{name}: {exc}")
            continue
        except ModelFileError as exc:  # this backend's model file is refused: say so, try the next one
            if backend != "auto":
                raise
            errors.append(str(exc))
            import warnings

            warnings.warn(f"{exc}; trying the next backend", RuntimeWarning, stacklevel=2)
            continue
        runtime = StreamRuntime(opened, name, entry, stepper, streams, on_bad_input, window or manifest.get("window"),
                                max_deviation)
        if monitor and "reference" in manifest["input"]:
            from .monitor import DriftMonitor

            runtime.monitor = DriftMonitor(manifest["input"]["reference"], runtime.feature_names, streams, thresholds,
                                           state_arrays=stepper.state)
        return runtime
    raise BackendUnavailableError(f"{opened.path}: no backend can run this bundle ({'; '.join(errors)})")


def _quantized(values: np.ndarray, quant, dtype) -> np.ndarray:
    """``values`` on an integer state tensor's grid (``quant`` = (scale, zero point)), as stored."""
    info = np.iinfo(dtype)
    return np.clip(np.rint(values / quant[0]) + quant[1], info.min, info.max).astype(dtype)


#: A temporary of an interrupted save older than this is removed by the next save.
STALE_TEMPORARY_SECONDS = 60.0


def _layout_text(layout: dict) -> str:
    return ", ".join(f"{name} {size}" for name, size in sorted(layout.items())) or "no state"


def _remove_stale_temporaries(path: Path) -> None:
    """Temporaries ``.NAME.*`` that an interrupted :meth:`StreamRuntime.save_state` left beside ``path``."""
    now = time.time()
    for leftover in path.parent.glob(f".{path.name}.*"):
        try:
            if leftover.is_file() and not leftover.is_symlink() and now - leftover.stat().st_mtime > STALE_TEMPORARY_SECONDS:
                leftover.unlink()
        except OSError:
            pass


def _choose_model(bundle: Bundle, backend: str, model: str | None, delegate: str | None) -> dict | None:
    fmt = {"onnxruntime": "onnx", "numpy": "numpy"}.get(backend, "tflite")
    if fmt == "numpy":
        return {"file": "network.npz", "format": "numpy", "quant": "float32", "io": "float", "input": "normalized"}
    # A compiled Edge TPU model (edgetpu_compiler's *_edgetpu.tflite, listed with its hash by
    # `edgelstm bundle-add`) stands for the model it was compiled from and runs only through
    # the delegate: with a delegate it is preferred, without one it is never chosen.
    candidates = [m for m in bundle.models(fmt) if not str(m["file"]).endswith(EDGETPU_SUFFIX)]
    compiled = {}  # source model file -> entry of its registered compiled model
    if fmt == "tflite":
        sources = {m["file"]: m for m in candidates}
        for listed in bundle.manifest.get("files", []) + [m for m in bundle.models(fmt) if m not in candidates]:
            name = str(listed["file"])
            source = name[: -len(EDGETPU_SUFFIX)] + ".tflite"
            if name.endswith(EDGETPU_SUFFIX) and source in sources:
                compiled[source] = dict(sources[source], file=name, sha256=listed.get("sha256"), edgetpu_compiled=True,
                                        compiled_from=source)
    if model and str(model).endswith(EDGETPU_SUFFIX) and fmt == "tflite":
        found = [c for c in compiled.values() if c["file"] == model]
        if not delegate:
            raise BundleError(
                f"{bundle.path}: {model} is compiled for the Edge TPU and runs only through the libedgetpu delegate "
                f"(a CPU interpreter does not know its edgetpu-custom-op); load it with delegate='libedgetpu.so.1', "
                f"or choose {model[: -len(EDGETPU_SUFFIX)]}.tflite for the CPU"
            )
        if not found:
            raise BundleError(f"{bundle.path}: {model} is not listed in the manifest next to the model it was compiled from; "
                              f"add it with: edgelstm bundle-add {bundle.path} {bundle.path / model}")
        return found[0]
    if model:
        by_file = [m for m in candidates if m["file"] == model]
        if by_file:
            return by_file[0]
        candidates = [m for m in candidates if m["quant"] == model]
    else:
        default = bundle.manifest.get("default_model")
        wanted = next((m["quant"] for m in bundle.manifest["models"] if m["file"] == default), "int8")
        # the default's quantization on this backend; else int8 (a dynamic-range default exists
        # only as TFLite: onnxruntime then runs the ONNX int8 model, not a float one)
        candidates = ([m for m in candidates if m["quant"] == wanted] or [m for m in candidates if m["quant"] == "int8"]
                      or candidates)
    io_order = ("quantized", "stream", "float") if delegate else ("stream", "float", "quantized")
    ordered = [m for io in io_order for m in candidates if m.get("io", "quantized") == io]
    if delegate and fmt == "tflite":
        for m in ordered:
            if m["file"] in compiled:
                return compiled[m["file"]]
            unlisted = bundle.file(m).with_name(m["file"][: -len(".tflite")] + EDGETPU_SUFFIX)
            if unlisted.exists():
                raise BundleError(
                    f"{unlisted}: a compiled Edge TPU model that the manifest does not list (so its hash was not checked); "
                    f"add it with: edgelstm bundle-add {bundle.path} {unlisted}"
                )
    return ordered[0] if ordered else None


def _open_stepper(bundle: Bundle, backend: str, entry: dict, threads: int, streams: int, delegate: str | None):
    from .steppers import NumpyStepper, OnnxStepper, TFLiteStepper

    window_model = bundle.manifest["network"].get("mode") == "window"
    if window_model and backend in ("numpy", "onnxruntime"):
        return _open_window_model(bundle, backend, entry, threads, streams)

    if backend == "numpy":
        from edgelstm.model.network_file import load_network_file

        network = load_network_file(bundle.path / "network.npz", bundle.manifest["network"])
        return NumpyStepper(network, batch=streams)
    if backend == "onnxruntime":
        return _opening(bundle.file(entry), backend, lambda: OnnxStepper(bundle.file(entry), threads=threads, batch=streams))
    _, module = tflite_interpreter_module(backend)
    delegates = None
    path = bundle.file(entry)
    compiled = bool(entry.get("edgetpu_compiled")) or path.name.endswith(EDGETPU_SUFFIX)
    if compiled and not delegate:  # _choose_model never picks it without one; a caller's entry might
        raise BundleError(f"{path}: compiled for the Edge TPU, it runs only through the libedgetpu delegate")
    if compiled and streams != 1:
        raise ValueError(
            f"{entry['file']} is compiled for the Edge TPU with fixed shapes (batch 1): load it with streams=1, "
            f"or with delegate=None to step {streams} streams in one call on the CPU"
        )
    if delegate:
        try:
            delegates = [module.load_delegate(delegate)]
        except (ValueError, OSError, AttributeError) as exc:
            raise BackendUnavailableError(
                f"the Edge TPU delegate {delegate} cannot be loaded ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): "
                f"{EDGETPU_HELP}; " + (f"{entry['file']} runs only through it; " if compiled else "")
                + "or load the bundle with delegate=None to run on the CPU"
            ) from None
        if not compiled:
            import warnings

            warnings.warn(
                f"{bundle.path}: no compiled {path.stem}{EDGETPU_SUFFIX} is listed in the bundle, so the Edge TPU runs "
                f"nothing of {entry['file']} (all on the CPU); `edgelstm inspect {bundle.path} --target coral-usb` "
                "prints how to compile and add it", stacklevel=3,
            )
    if window_model:
        from .window_models import TFLiteWindowModel

        return _opening(path, backend, lambda: TFLiteWindowModel(path, threads=threads, interpreter=backend,
                                                                 delegates=delegates, batch=streams))
    return _opening(path, backend, lambda: TFLiteStepper(path, threads=threads, interpreter=backend, delegates=delegates,
                                                         batch=streams, output_copies=entry.get("output_copies", 1)))


def _check_against_manifest(bundle: Bundle, entry: dict, stepper) -> None:
    """The opened model must be the one the manifest describes: its input width, its output
    size (step models) and its state tensors, or it is refused naming the field."""
    manifest = bundle.manifest
    where = f"{bundle.path}: {entry['file']}"
    n_features = getattr(stepper, "n_features", None)
    token = manifest["input"].get("kind") == "token"
    if n_features is not None and not token and int(n_features) != manifest["input"]["n_features"]:
        raise ModelFileError(f"{where}: the model takes {n_features} features, the manifest says "
                             f"{manifest['input']['n_features']} (field input.n_features)")
    step_model = manifest["network"].get("mode") == "step" and manifest["outputs"][0].get("mode") != "reconstruction_error"
    output_size = getattr(stepper, "output_size", None)
    if step_model and output_size is not None and int(output_size) != manifest["network"]["output_size"]:
        raise ModelFileError(f"{where}: the model has {output_size} outputs, the manifest says "
                             f"{manifest['network']['output_size']} (field network.output_size)")
    if entry.get("format") == "numpy":  # the reference keeps its own float state layout
        return
    sizes = {s["name"]: s["size"] for s in manifest["state"]}
    for name, array in zip(getattr(stepper, "state_names", []), getattr(stepper, "state", [])):
        if name not in sizes:
            raise ModelFileError(f"{where}: state tensor {name!r} is not in the manifest (field state)")
        if int(array.shape[-1]) != sizes[name]:
            raise ModelFileError(f"{where}: state tensor {name!r} has {array.shape[-1]} values, the manifest says "
                                 f"{sizes[name]} (field state[].size)")


def _opening(path, engine: str, open_model):
    """``open_model()``; the interpreter's own refusal of a damaged or foreign file becomes a
    :class:`ModelFileError` naming the file and the reason (``load(backend="auto")`` then
    tries the next backend). A missing module or a bundle error passes through as it is."""
    try:
        return open_model()
    except (ImportError, BundleError):
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path}: {engine} refuses this model file ({first[:300]})") from None


def _open_window_model(bundle: Bundle, backend: str, entry: dict, threads: int, streams: int):
    """A window model on onnxruntime or the numpy reference (TFLite ones open in :func:`_open_stepper`)."""
    from .window_models import NumpyWindowModel, OnnxWindowModel

    if backend == "numpy":
        from edgelstm.model.network_file import load_network_file

        network = load_network_file(bundle.path / "network.npz", bundle.manifest["network"])
        return NumpyWindowModel(network, batch=streams)
    return _opening(bundle.file(entry), backend, lambda: OnnxWindowModel(bundle.file(entry), threads=threads, batch=streams))


def scale_outputs(stepper, factors: np.ndarray) -> None:
    """Make ``stepper``'s ``step``/``step_within``/``run`` return their outputs times ``factors``
    (one per output value): a model with several heads scales each inside (see
    :class:`~edgelstm.model.network.OutputsLayer`); the factors, powers of two, undo it exactly."""
    for name in ("step", "step_within", "run"):
        method = getattr(stepper, name, None)
        if method is None:
            continue

        def scaled(*args, _method=method, **kwargs):
            y = _method(*args, **kwargs)
            return None if y is None else y * factors

        setattr(stepper, name, scaled)


class StreamRuntime:
    """A bundle's step model, stepping ``streams`` independent streams one reading at a time."""

    def __init__(self, bundle: Bundle, backend: str, entry: dict, stepper, streams: int, on_bad_input: str, window: int | None,
                 max_deviation: float | None = MAX_DEVIATION):
        self.bundle = bundle
        self.backend = backend
        self.model_file = entry["file"]
        self.model_entry = entry
        self.streams = streams
        self.on_bad_input = on_bad_input
        manifest = bundle.manifest
        #: a window model (Bidirectional, autoencoder, Conv1D): the whole window in one call
        self.window_model = manifest["network"].get("mode") == "window"
        self.autoencoder = manifest["outputs"][0].get("mode") == "reconstruction_error"
        if self.window_model:
            if window and int(window) != int(manifest["window"]):
                raise InputError(f"{bundle.path}: the model was unrolled over windows of {manifest['window']} "
                                 f"steps; window={window} cannot be used")
            window = manifest["window"]
        self.window = int(window) if window else None
        factors = np.concatenate([np.full(int(o["size"]), float(o.get("factor", 1.0)), np.float32) for o in manifest["outputs"]])
        if np.any(factors != 1.0):  # several heads, each scaled inside the model: undone here, exactly
            scale_outputs(stepper, factors)
        self._stepper = stepper
        #: the outputs ``step()`` returns side by side: name -> slice of ``y`` (one entry per head)
        self.outputs = {}
        start = 0
        for output in manifest["outputs"]:
            self.outputs[output["name"]] = slice(start, start + int(output["size"]))
            start += int(output["size"])
        self.n_features = int(manifest["input"]["n_features"])
        self.vocabulary = manifest["input"].get("vocabulary")  # token models: ids 0..vocabulary-1
        self.feature_names = list(manifest["input"].get("features") or [f"f{i}" for i in range(self.n_features)])
        self.output_size = int(sum(int(o["size"]) for o in manifest["outputs"]))
        normalization = manifest["input"]["normalization"]
        self._offset = np.asarray(normalization["offset"], np.float32)
        self._scale = np.asarray(normalization["scale"], np.float32)
        if entry.get("input", "normalized") == "normalized":
            stepper.set_normalization(self._offset, self._scale)
        self._single = streams == 1
        self._reading_shape = (self.n_features,) if self._single else (streams, self.n_features)
        self._ones = np.ones(streams * self.n_features, np.float32)
        self._last_good = np.full((streams, self.n_features), np.nan, np.float32) if on_bad_input == "hold" else None
        self._nan_output = np.full((streams, self.output_size), np.nan, np.float32)
        self._nan_output.flags.writeable = False
        self._plain = not window and not self.vocabulary  # token ids are always range-checked
        self._stepper_step = getattr(stepper, "step", None)  # window models have run() instead
        # TFLite steppers return the same read-only buffer every step: keep its row view
        self._y_stable = getattr(stepper, "_y_result", None)
        self._y_row = self._y_stable[0] if self._y_stable is not None else None
        self._total = 0  # steps taken; per-stream counts are _total - _base
        self._base = np.zeros(streams, np.int64)
        self._rejected = 0
        self._held = 0
        self.monitor = None  # set by load() when the manifest carries reference statistics
        self._state_layout = self._layout(manifest)
        self._bounded = self._bound_check(manifest, max_deviation)
        #: float state (float32/float16/dynamic models) can turn non-finite; int8 state cannot
        # (a window run starts every window from a zero state: nothing can persist there)
        self._float_state = any(q is None for q in stepper.state_quant) and bool(stepper.state) and not self.window
        self._ones_y = np.ones(streams * self.output_size, np.float32)
        self._state_resets = 0
        self._last_reset_step = np.full(streams, -(10**9), np.int64)
        self._events = []
        #: after step_streams(): which of its readings were refused (bool, one per stream given)
        self.last_rejected = np.zeros(0, bool)
        if self.window:
            self._ring = np.zeros((streams, self.window, self.n_features), np.float32)
            self._filled = np.zeros(streams, np.int64)
            self._window_out = np.empty((streams, self.output_size), np.float32)

    # ------------------------------------------------------------------ stepping
    def step(self, x) -> np.ndarray:
        """One reading per stream: ``(features,)`` with one stream, or ``(streams, features)``.

        Returns the output ``(outputs,)`` or ``(streams, outputs)``: a read-only array that
        the next step overwrites (copy it to keep it).

        The fast path (a float array of the expected shape, every value finite and within
        ``max_deviation``, no window) checks the bound with one dot product on the normalised
        reading (NaN and Inf propagate into it) and goes straight to the model; anything else
        goes through :meth:`_checked_step`, which names the bad value.
        """
        try:
            fast = x.shape == self._reading_shape and x.dtype.kind == "f"
        except AttributeError:
            fast = False
        if fast and self._plain and (y := self._fast_step(x)) is not None:
            if self._single:
                return self._y_row if y is self._y_stable else y[0]
            return y
        y = self._checked_step(x)
        return y[0] if (self._single and np.ndim(x) == 1) else y

    def _fast_step(self, x: np.ndarray):
        """Every stream's reading at once, float, the expected shape: stepped and the outputs
        returned, or ``None`` (nothing stepped) when a value is not finite or beyond the bound."""
        y = self._bounded(x)
        if y is None:
            return None
        self._total += 1
        # NaN reaches the output at once; an infinite cell state may hide behind a saturated
        # tanh, so the state itself is looked at every STATE_CHECK_EVERY steps
        if self._float_state and (not self._total % STATE_CHECK_EVERY
                                  or not (self._y_checked or _isfinite(y.reshape(-1).dot(self._ones_y)))):
            y = self._repair_state(y)
        if self.monitor is not None:
            self.monitor.observe(x)
        if self._last_good is not None:
            self._last_good[...] = x
        return y

    def step_streams(self, readings, streams) -> np.ndarray:
        """Step only some streams: one reading for each stream in ``streams`` (indices, no
        repeats), ``readings`` shaped ``(len(streams), features)``; returns their outputs
        ``(len(streams), outputs)`` (a copy). Every other stream's state, window, monitor and
        step count stay exactly as they were: the model still runs once for all rows (one
        Invoke), and the idle rows' state is put back afterwards.

        For a gateway whose devices send readings independently: each call steps the devices
        that have a new reading. Bad readings follow ``on_bad_input`` per stream, as in
        :meth:`step` (``error`` raises before any state changes); afterwards
        :attr:`last_rejected` says which of the given readings were refused (their outputs
        are NaN), so a caller can tell a refused reading from a window still filling."""
        index = np.asarray(streams, dtype=np.int64).reshape(-1)
        count = index.size
        if count == 0:
            return np.empty((0, self.output_size), np.float32)
        idle = np.ones(self.streams, bool)
        if index.min() < 0 or index.max() >= self.streams:
            raise ValueError(f"streams {index.tolist()}: indices 0..{self.streams - 1}, each at most once")
        idle[index] = False
        if self.streams - np.count_nonzero(idle) != count:
            raise ValueError(f"streams {index.tolist()}: indices 0..{self.streams - 1}, each at most once")
        try:
            array = np.asarray(readings, dtype=np.float32)
        except (ValueError, TypeError) as exc:
            raise InputError(f"readings are not an array of numbers ({exc})") from None
        if array.ndim == 1 and count == 1:
            array = array.reshape(1, -1)
        if array.shape != (count, self.n_features):
            raise InputError(f"readings have shape {array.shape}; expected ({count}, {self.n_features}) "
                             f"for streams {index.tolist()}")
        if self.vocabulary:
            raise InputError("step_streams() takes feature readings; token models step all streams with step()")
        values = np.empty((self.streams, self.n_features), np.float32)
        values[index] = array
        if count == self.streams and self._plain:  # every stream has a reading: the plain step when all are good
            y = self._fast_step(values[0] if self._single else values)
            if y is not None:
                self.last_rejected = np.zeros(count, bool)
                return y.reshape(self.streams, -1)[index]
        with np.errstate(invalid="ignore", over="ignore"):
            bad = ~np.isfinite(values)
            if self._limit is not None:
                bad |= np.abs(values.astype(np.float64) - self._mean) > self._limit
        bad[idle] = False
        rejected = np.zeros(self.streams, bool)
        self.last_rejected = rejected[index]
        if count == self.streams and not bad.any():  # every stream has a good reading (a window model): the plain step
            return np.array(self.step(values if not self._single else values[0]), np.float32).reshape(self.streams, -1)[index]
        if bad.any():
            stream, feature = (int(v) for v in np.argwhere(bad)[0])
            if self.on_bad_input == "error":
                raise InputError(f"stream {stream}: feature '{self.feature_names[feature]}' (index {feature}) is "
                                 f"{values[stream, feature]}; the readings were rejected and no state changed")
            rows_bad = bad.any(axis=1)
            if self.on_bad_input == "hold" and self._last_good is not None:
                held = np.where(bad, self._last_good, values)
                fixable = rows_bad & np.isfinite(held).all(axis=1)
                self._held += int(fixable.sum())
                values, rows_bad = held, rows_bad & ~fixable
            rejected = rows_bad
        self.last_rejected = rejected[index]
        y = self._step_some(values, idle | rejected, counted=rejected)
        return y[index]

    @property
    def steps(self) -> np.ndarray:
        """Readings stepped so far, per stream (since its last reset)."""
        return self._total - self._base

    @property
    def counters(self) -> dict:
        return {"steps": self._total, "rejected": self._rejected, "held": self._held, "state_resets": self._state_resets}

    def _advance(self, values, rejected=None) -> np.ndarray:
        y = self._window_step(values) if self.window else self._stepper_step(values)
        self._total += 1
        if self._float_state and (not self._total % STATE_CHECK_EVERY or not np.all(np.isfinite(y))):
            y = self._repair_state(y)
        if self.monitor is not None and not self.vocabulary:
            self.monitor.observe(values, rejected)
        return y

    def events(self) -> list:
        """Drift, saturation and stuck-sensor events, and state resets, since the last call (and clears them)."""
        events, self._events = self._events, []
        return events + (self.monitor.drain() if self.monitor is not None else [])

    def _bound_check(self, manifest: dict, max_deviation: float | None):
        """The fast path's step function: it returns ``None``, without stepping, for a reading
        that is not finite or has a value beyond ``max_deviation`` (then :meth:`_checked_step`
        finds which). Where the stepper normalises with the calibration z-score (the usual
        case), the bound is one dot product on its own normalised input."""
        self.max_deviation = max_deviation
        self._y_checked = False  # whether the fast path's step function refuses a non-finite y itself
        stats = manifest["input"].get("calibration_stats") or {}
        if self.vocabulary or not max_deviation or "mean" not in stats:
            self._limit = None
            ones = self._ones
            step = self._stepper_step
            if self._single:
                return lambda x: step(x) if _isfinite(x.dot(ones)) else None
            return lambda x: step(x) if _isfinite(x.reshape(-1).dot(ones)) else None
        self._mean = np.asarray(stats["mean"], np.float64)
        std = np.asarray(stats["std"], np.float64)
        self._spread = np.where(std > 0, std, np.maximum(self._scale.astype(np.float64), 1e-12))
        self._limit = max_deviation * self._spread
        # summed squares over every stream <= max_deviation^2 implies every value within bound
        unit = getattr(self._stepper, "normalized_unit", None)
        # the stepper's normalisation is (close to) the calibration z-score: its result measures the bound
        zscore = (manifest["input"]["normalization"].get("kind") == "zscore"
                  and np.all(np.abs(self._offset - self._mean) <= 0.1 * self._spread)
                  and np.all(np.abs(self._scale / self._spread - 1.0) <= 0.1))
        # (a model that takes raw readings normalises them itself, with the same offset and scale)
        normalizes = self.model_entry.get("input", "normalized") == "normalized" or getattr(self._stepper, "takes_raw", False)
        if unit and zscore and normalizes:
            # a model that takes raw readings puts a non-finite y into its deviation too: no check of y here
            self._y_checked = bool(getattr(self._stepper, "takes_raw", False))
            return functools.partial(self._stepper.step_within, limit2=float(max_deviation / unit) ** 2)
        mean, inverse = self._mean, 1.0 / (max_deviation * self._spread)
        buffer = np.empty(self._reading_shape, np.float64)  # squares of 1e30 stay finite
        flat = buffer.reshape(-1)
        step = self._stepper_step

        def general(x):
            np.subtract(x, mean, out=buffer)
            np.multiply(buffer, inverse, out=buffer)
            return step(x) if flat.dot(flat) <= 1.0 else None

        return general

    def _repair_state(self, y) -> np.ndarray:
        """A stream whose float state became non-finite is reset (and says so) instead of
        emitting NaN (or a saturated unit) for ever; its output for this step is NaN. Returns
        ``y`` itself when nothing is broken."""
        broken = ~np.isfinite(np.reshape(y, (self.streams, self.output_size))).all(axis=1)
        for array in self._stepper.state:
            broken |= ~np.isfinite(array.reshape(self.streams, -1)).all(axis=1)
        if not broken.any():
            return y
        y = np.array(y, np.float32).reshape(self.streams, self.output_size)
        for stream in np.flatnonzero(broken):
            self._stepper.reset(int(stream))
            if self.window:
                self._filled[stream] = 0
            self._state_resets += 1
            self._last_reset_step[stream] = self._total
            self._events.append({"event": "state_reset", "stream": int(stream), "step": int(self._total),
                                 "reason": "the model's state became non-finite; the stream starts again from a zero state"})
            y[stream] = np.nan
        return y

    def health(self) -> dict:
        """The monitor's statistics and flags per stream and feature, an overall status
        (``ok``, ``degraded``, ``failing``, ``warming_up``) and the runtime's counters."""
        report = self.monitor.health() if self.monitor is not None else {"status": "unmonitored", "streams": []}
        recent = (self._total - self._last_reset_step) < RESET_DEGRADED_STEPS
        if recent.any():
            report["status"] = "failing" if recent.all() and report["status"] == "failing" else (
                report["status"] if report["status"] == "failing" else "degraded")
            report["state_reset_streams"] = np.flatnonzero(recent).tolist()
        report["counters"] = self.counters
        report["bundle_id"] = self.bundle.bundle_id
        report["model"] = self.model_file
        return report

    def _token_step(self, x) -> np.ndarray:
        """One token id per stream (an Embedding model): integers in ``0..vocabulary-1``."""
        ids = np.asarray(x)
        if ids.dtype.kind == "f" and np.all(np.isfinite(ids)) and np.all(ids == np.round(ids)):
            ids = ids.astype(np.int64)
        if ids.dtype.kind not in "iu":
            return self._reject_all(f"token ids must be integers, got {ids.dtype}")
        if ids.size != self.streams:
            return self._reject_all(f"{ids.size} token id(s) for {self.streams} stream(s)")
        ids = ids.reshape(self.streams, 1)
        bad = (ids < 0) | (ids >= self.vocabulary)
        if bad.any():
            stream = int(np.argwhere(bad)[0][0])
            message = f"stream {stream}: token id {int(ids[stream, 0])} is out of range 0..{self.vocabulary - 1}"
            if self.on_bad_input == "error" or bad.all():
                return self._reject_all(message)
            return self._step_some(ids, bad[:, 0])
        return self._advance(ids)

    def _checked_step(self, x) -> np.ndarray:
        """Validate readings the fast path refused and apply the bad-input policy."""
        if self.vocabulary:
            return self._token_step(x)
        try:
            array = np.asarray(x)
        except (ValueError, TypeError) as exc:
            return self._reject_all(f"reading is not an array of numbers ({exc})")
        if array.dtype.kind not in "fiu":
            return self._reject_all(f"reading has dtype {array.dtype}; expected numbers")
        expected = (self.streams, self.n_features)
        if array.shape == (self.n_features,) and self.streams == 1:
            array = array.reshape(expected)
        if array.shape != expected:
            got = array.shape[-1] if array.ndim else 0
            if got != self.n_features:
                return self._reject_all(
                    f"reading has {got} features, the model expects {self.n_features} ({', '.join(self.feature_names)})"
                )
            return self._reject_all(f"readings have shape {array.shape}; expected {expected} for {self.streams} stream(s)")
        values = array.astype(np.float32)
        with np.errstate(invalid="ignore", over="ignore"):
            bad = ~np.isfinite(values)
            if self._limit is not None:
                bad |= np.abs(values.astype(np.float64) - self._mean) > self._limit
        if bad.any():
            stream, feature = (int(v) for v in np.argwhere(bad)[0])
            if self.on_bad_input == "error":
                value = values[stream, feature]
                why = "" if not np.isfinite(value) else (
                    f", {abs(float(value) - self._mean[feature]) / self._spread[feature]:.3g} calibration standard "
                    f"deviations from the calibration mean (the limit is max_deviation={self.max_deviation:g})")
                raise InputError(
                    f"stream {stream}: feature '{self.feature_names[feature]}' (index {feature}) is "
                    f"{value}{why}; the reading was rejected and no state changed"
                )
            rows_bad = bad.any(axis=1)
            if self.on_bad_input == "hold":
                held = np.where(bad, self._last_good, values)
                fixable = rows_bad & np.isfinite(held).all(axis=1)
                self._held += int(fixable.sum())
                values, rows_bad = held, rows_bad & ~fixable
            if rows_bad.all():
                self._rejected += self.streams
                self._base += 1
                self._total += 1
                return self._nan_output
            if rows_bad.any():
                return self._step_some(values, rows_bad)
        if self._last_good is not None:
            self._last_good[...] = values
        return self._advance(values)

    def _reject_all(self, message: str) -> np.ndarray:
        if self.on_bad_input == "error":
            raise InputError(f"{message}; the reading was rejected and no state changed")
        if self._last_good is not None and np.isfinite(self._last_good).all():
            self._held += self.streams
            return self._advance(self._last_good.copy())
        self._rejected += self.streams
        self._base += 1
        self._total += 1
        return self._nan_output

    def _state_rows(self):
        """``(arena, byte indices per stream)`` over every state tensor (batch first, C order, one
        compact region: :func:`~edgelstm.runtime.steppers.arena_view`), so that saving and
        restoring some streams' state is one indexed read and one write instead of two numpy
        calls per tensor (a gateway steps a subset of its streams on most calls); ``None`` when
        the tensors do not allow it."""
        state = self._stepper.state
        cached = getattr(self, "_state_rows_cache", None)
        if cached is None or cached[0] is not state:
            from .steppers import arena_view

            found = None
            if state and all(a.ndim >= 1 and a.shape[0] == self.streams for a in state):
                found = arena_view(state)
            rows = None
            if found is not None:
                arena, offsets = found
                rows = arena, np.concatenate([o.reshape(self.streams, -1) for o in offsets], axis=1)
            cached = self._state_rows_cache = (state, rows)
        return cached[1]

    def _step_some(self, values, rows_bad, counted=None) -> np.ndarray:
        """Step only the good rows: the other rows' state (and window) is put back after the
        call. ``counted``: the rows that count as rejected (default: all of ``rows_bad``; idle
        rows of :meth:`step_streams` do not)."""
        arena_rows = self._state_rows()
        if arena_rows is not None:  # one fancy-indexed read of every state tensor's idle rows
            arena, per_stream = arena_rows
            where = per_stream[rows_bad].reshape(-1)
            saved = arena[where]
        else:
            saved = [s[rows_bad].copy() for s in self._stepper.state]
        if self.window:
            saved_ring, saved_filled = self._ring[rows_bad].copy(), self._filled[rows_bad].copy()
        good = ~rows_bad
        if self._last_good is not None:
            self._last_good[good] = values[good]
        values = values.copy()
        values[rows_bad] = 0 if self.vocabulary else self._offset  # any valid reading; its effect is undone below
        y = self._advance(values, rows_bad).copy()
        if arena_rows is not None:
            arena[where] = saved
        else:
            for array, rows in zip(self._stepper.state, saved):
                array[rows_bad] = rows
        if self.window:
            self._ring[rows_bad], self._filled[rows_bad] = saved_ring, saved_filled
        y[rows_bad] = np.nan
        self._rejected += int((rows_bad if counted is None else counted).sum())
        self._base += rows_bad.astype(np.int64)
        return y

    def _window_step(self, batch):
        self._ring[:, :-1] = self._ring[:, 1:]
        self._ring[:, -1] = batch
        self._filled = np.minimum(self._filled + 1, self.window)
        if self.window_model:
            y = self._window_model_output(self._stepper.run(self._ring))
        else:
            self._stepper.reset()
            for t in range(self.window):
                y = self._stepper.step(self._ring[:, t])
        np.copyto(self._window_out, y)
        self._window_out[self._filled < self.window] = np.nan
        return self._window_out

    def _window_model_output(self, y: np.ndarray) -> np.ndarray:
        """A window model's output per stream: an autoencoder's reconstruction error (mean
        squared, normalised units: the anomaly score), a sequence output's last step, or ``y``."""
        if self.autoencoder:
            self.reconstruction = y
            diff = y - self._stepper.normalized
            return np.mean((diff * diff).reshape(len(diff), -1), axis=1, keepdims=True)
        return y[:, -1] if y.ndim == 3 else y

    def run(self, sequence) -> np.ndarray:
        """Step through a whole array: ``(T, features)`` (one stream) or ``(T, streams, features)``;
        a token model takes ``(T,)`` or ``(T, 1)`` ids (one stream) or ``(T, streams)``.

        Returns a new array of outputs ``(T, outputs)`` or ``(T, streams, outputs)``.
        """
        sequence = np.asarray(sequence)
        if self.vocabulary:  # ids: one per stream and step
            sequence = sequence.reshape(len(sequence), -1)
            if sequence.shape[1] != self.streams:
                raise InputError(f"token ids of shape {np.shape(sequence)}: expected (T,) or (T, {self.streams}) for {self.streams} stream(s)")
            sequence = sequence[:, 0, None] if self.streams == 1 else sequence
        one_stream = sequence.ndim == 2 and (self.streams == 1 or self.vocabulary is None)
        shape = (len(sequence), self.output_size) if one_stream else (len(sequence), self.streams, self.output_size)
        out = np.empty(shape, np.float32)
        for t in range(len(sequence)):
            out[t] = self.step(sequence[t])
        return out

    # ------------------------------------------------------------------ state
    def reset(self, stream: int | None = None) -> None:
        """Zero the state of every stream, or of one (a new machine in that stream: its drift
        flags are cleared too, and with all streams reset the monitor's window restarts)."""
        rows = None if stream is None else self._row(stream)
        self._stepper.reset(rows)
        if self.monitor is not None:
            self.monitor.reset(rows)
        if stream is None:
            self._base[:] = self._total
        else:
            self._base[rows] = self._total
        if self._last_good is not None:
            self._last_good[slice(None) if rows is None else rows] = np.nan
        if self.window:
            if stream is None:
                self._filled[:] = 0
            else:
                self._filled[rows] = 0

    def get_state(self, stream: int | None = None) -> dict:
        """The state as plain numpy arrays plus metadata.

        ``state``: each LSTM layer's ``h_k`` and ``c_k`` as float32 ``(streams, units)`` in the
        source model's unit order (portable across backends and models of the bundle);
        ``raw``: the model's own state tensors as held (int8 for int8 models), for bit-exact
        restores into the same model file.
        """
        rows = slice(None) if stream is None else slice(self._row(stream), self._row(stream) + 1)
        stepper = self._stepper
        logical = {}
        for k, (name, array) in enumerate(zip(stepper.state_names, stepper.state)):
            base, units, size = self._state_layout[name]
            values = stepper.state_to_float(k, array[rows])
            target = logical.setdefault(base, np.zeros((values.shape[0], size), np.float32))
            if name.endswith("_lo"):  # a residual cell: c = c_hi + c_lo
                target[:, units] += values
            else:
                target[:, units] = values
        state = {
            "bundle_id": self.bundle.bundle_id,
            "model": self.model_file,
            "backend": self.backend,
            "streams": self.streams if stream is None else 1,
            "steps": self.steps[rows].copy(),
            "state": logical,
            "raw": {name: array[rows].copy() for name, array in zip(stepper.state_names, stepper.state)},
        }
        if self.window:
            state["window"] = self._ring[rows].copy()
            state["window_filled"] = self._filled[rows].copy()
        return state

    def set_state(self, state: dict, stream: int | None = None) -> None:
        """Restore a state from :meth:`get_state` (all streams, or into one stream).

        All or nothing: every field is checked (bundle identity, keys, shapes, dtypes, finite
        values, step counts, the window) before anything changes, and an error names the field."""
        rows = slice(None) if stream is None else slice(self._row(stream), self._row(stream) + 1)
        count = self.streams if stream is None else 1
        if not isinstance(state, dict):
            raise BundleError(f"a state is a dict from get_state(), not {type(state).__name__}")
        if state.get("bundle_id") != self.bundle.bundle_id:
            raise BundleError(
                f"state belongs to bundle {state.get('bundle_id')!r}, this runtime runs {self.bundle.bundle_id!r}"
            )
        stepper = self._stepper
        raw = state.get("raw") if isinstance(state.get("raw"), dict) else {}
        same_model = state.get("model") == self.model_file and set(raw) == set(stepper.state_names)
        writes = []  # (state array index, values) - applied only when everything checked
        on_grid = {}  # residual cells: the hi part of c as its int8 grid holds it
        for k, (name, array) in enumerate(zip(stepper.state_names, stepper.state)):
            if same_model:
                values = np.asarray(raw[name])
                if values.dtype != array.dtype:
                    raise BundleError(f"state field 'raw.{name}' is {values.dtype}, the model holds {array.dtype}; "
                                      "it is not cast (a float 1000.7 would wrap around in int8)")
                if values.ndim and values.shape[0] != count:
                    raise BundleError(f"state field 'raw.{name}' holds {values.shape[0]} stream(s); restoring into {count}")
                if values.shape != (count,) + array.shape[1:]:
                    raise BundleError(f"state field 'raw.{name}' has shape {values.shape}, expected {(count,) + array.shape[1:]}")
                if values.dtype.kind == "f" and not np.isfinite(values).all():
                    raise BundleError(f"state field 'raw.{name}' holds NaN or Inf")
                writes.append((k, values, True))
            else:
                base, units, size = self._state_layout[name]
                logical = state.get("state") if isinstance(state.get("state"), dict) else {}
                if base not in logical:
                    raise BundleError(f"state field 'state.{base}' is missing (it has {', '.join(sorted(logical)) or 'none'})")
                values = np.asarray(logical[base])
                if values.ndim and values.shape[0] != count:
                    raise BundleError(f"state field 'state.{base}' holds {values.shape[0]} stream(s); restoring into {count}")
                if values.dtype.kind not in "fiu" or values.shape != (count, size):
                    raise BundleError(f"state field 'state.{base}' is {values.dtype} {values.shape}, expected float {(count, size)}")
                values = values.astype(np.float32)
                if not np.isfinite(values).all():
                    raise BundleError(f"state field 'state.{base}' holds NaN or Inf")
                part = values[:, units]
                if name.endswith("_lo"):  # a residual cell: what the hi tensor's grid could not hold
                    part = part - on_grid[name[:-3]]
                elif f"{name}_lo" in stepper.state_names:
                    on_grid[name] = stepper.state_to_float(k, _quantized(part, stepper.state_quant[k], array.dtype))
                writes.append((k, part, False))
        steps = np.asarray(state.get("steps", 0))
        if steps.dtype.kind not in "iu" or steps.shape not in ((), (count,)) or (steps < 0).any():
            raise BundleError(f"state field 'steps' must be {count} non-negative whole number(s), got {steps.dtype} {steps.shape}")
        window = None
        if self.window and "window" in state:
            window, filled = np.asarray(state["window"]), np.asarray(state.get("window_filled"))
            if window.shape != (count, self.window, self.n_features) or window.dtype.kind != "f" or not np.isfinite(window).all():
                raise BundleError(f"state field 'window' is {window.dtype} {window.shape}, expected finite floats "
                                  f"{(count, self.window, self.n_features)}")
            if filled.shape != (count,) or filled.dtype.kind not in "iu" or (filled < 0).any() or (filled > self.window).any():
                raise BundleError(f"state field 'window_filled' must be {count} count(s) within 0..{self.window}")
        for k, values, exact in writes:  # everything checked: now change the state
            if exact:
                stepper.state[k][rows] = values
            else:
                stepper.state_from_float(k, values, rows)
        self._base[rows] = self._total - steps.astype(np.int64)
        if self._last_good is not None:
            self._last_good[rows] = np.nan
        if self.monitor is not None:
            self.monitor.reset(None if stream is None else self._row(stream))
        if window is not None:
            self._ring[rows] = window
            self._filled[rows] = filled

    def carry_state_from(self, other: "StreamRuntime") -> None:
        """Continue ``other``'s streams in this runtime (a model update: another bundle, e.g. the
        same network fine-tuned): each stream's float state (``get_state()["state"]``, the
        source model's units), step count and window are set here, requantized to this model's
        grids. Raises :class:`BundleError`, changing nothing, when the state layouts differ
        (other layers or sizes, another stream count or window): then the streams must restart."""
        if other.streams != self.streams:
            raise BundleError(f"the running model has {other.streams} stream(s), the new one {self.streams}")
        if other.n_features != self.n_features:
            raise BundleError(f"the running model reads {other.n_features} features, the new one {self.n_features}")
        state = other.get_state()
        theirs = {name: values.shape[1] for name, values in state["state"].items()}
        ours = {base: size for base, _, size in self._state_layout.values()}
        if theirs != ours:
            raise BundleError(f"the state layouts differ (running: {_layout_text(theirs)}; new: {_layout_text(ours)})")
        if bool(self.window) != bool(other.window) or (self.window and self.window != other.window):
            raise BundleError(f"the running model steps windows of {other.window}, the new one {self.window}")
        state = dict(state, bundle_id=self.bundle.bundle_id, model=None, raw={})  # through the float state
        if not self.window:
            state.pop("window", None)
        self.set_state(state)

    def save_state(self, path) -> None:
        """Write the state atomically (temporary file, fsync, rename): a reboot mid-write
        leaves the previous file intact."""
        path = Path(path)
        state = self.get_state()
        arrays = {f"raw.{name}": value for name, value in state["raw"].items()}
        arrays.update({f"state.{name}": value for name, value in state["state"].items()})
        arrays["steps"] = state["steps"]
        if self.window:
            arrays["window"], arrays["window_filled"] = state["window"], state["window_filled"]
        meta = {k: state[k] for k in ("bundle_id", "model", "backend", "streams")}
        meta["saved"] = time.time()
        arrays["meta"] = np.array(json.dumps(meta))
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as stream:
                np.savez(stream, **arrays)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def load_state(self, path) -> None:
        """Restore a state written by :meth:`save_state` (same bundle; any model of it)."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise BundleError(f"{path}: unreadable state file ({exc})") from None
        try:
            meta = json.loads(str(arrays.pop("meta")))
        except (KeyError, json.JSONDecodeError, ValueError):
            raise BundleError(f"{path}: not an edgelstm state file (no metadata)") from None
        if not isinstance(meta, dict):
            raise BundleError(f"{path}: not an edgelstm state file (its metadata is not an object)")
        if meta.get("streams") != self.streams:
            raise BundleError(f"{path}: state of {meta.get('streams')} stream(s), this runtime has {self.streams}")
        state = dict(meta)
        state["raw"] = {k[4:]: v for k, v in arrays.items() if k.startswith("raw.")}
        state["state"] = {k[6:]: v for k, v in arrays.items() if k.startswith("state.")}
        state["steps"] = arrays.get("steps", 0)
        if "window" in arrays:
            state["window"], state["window_filled"] = arrays["window"], arrays["window_filled"]
        try:
            self.set_state(state)
        except BundleError as exc:
            raise BundleError(f"{path}: {exc}") from None

    # ------------------------------------------------------------------ helpers
    def _row(self, stream: int) -> int:
        if not 0 <= int(stream) < self.streams:
            raise IndexError(f"stream {stream} out of range (0..{self.streams - 1})")
        return int(stream)

    def _layout(self, manifest: dict) -> dict:
        """Model state tensor -> (logical name, unit indices, layer size)."""
        sizes = {}
        entries = {s["name"]: s for s in manifest["state"]}
        for entry in manifest["state"]:
            base = f"{entry['name'][0]}_{entry['name'].split('_')[1]}"
            counted = entry["name"][0] == "c" and "residual_of" not in entry  # c_k_lo holds no units of its own
            sizes[base] = sizes.get(base, 0) + (entry["size"] if counted else 0)
        for entry in manifest["state"]:
            if entry["name"][0] == "h":
                sizes[entry["name"]] = entry["size"]
        layout = {}
        for name in self._stepper.state_names:
            base = f"{name[0]}_{name.split('_')[1]}"
            if name in entries and self.backend != "numpy":
                units = np.asarray(entries[name]["units"], np.intp)
            else:  # the numpy reference keeps the source order
                units = np.arange(sizes[base], dtype=np.intp)
            layout[name] = (base, units, sizes[base])
        return layout

    def describe(self) -> dict:
        stepper = self._stepper
        return {
            "bundle": str(self.bundle.path),
            "bundle_id": self.bundle.bundle_id,
            "backend": self.backend,
            "engine": getattr(stepper, "engine", self.backend),
            "engine_version": getattr(stepper, "engine_version", None),
            "model": self.model_file,
            "quant": self.model_entry.get("quant"),
            "streams": self.streams,
            "window": self.window,
            "features": self.feature_names,
        }

    def __repr__(self) -> str:
        d = self.describe()
        return f"<StreamRuntime {d['model']} on {d['engine']} {d['engine_version'] or ''}, {d['streams']} stream(s)>"
