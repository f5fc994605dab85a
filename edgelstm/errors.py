"""Exceptions that name the problem.

Every error a user can cause (a bad model file, an unsupported layer, bad calibration data,
a damaged bundle, a bad reading) is one of these, carrying a message that names the file,
layer, field or line. The CLI prints the message on one line and exits non-zero; it never
shows a traceback from deep inside a framework.
"""


class EdgeLSTMError(Exception):
    """Base class of every error edgelstm raises on purpose."""


class ModelFormatError(EdgeLSTMError):
    """The model file is missing, truncated, corrupt or of an unknown format."""


class UnsupportedLayerError(EdgeLSTMError):
    """The model contains a layer (or a layer option) that cannot be converted."""


class CalibrationError(EdgeLSTMError):
    """The calibration data cannot be used: wrong shape, wrong feature count, NaN, ..."""


class BundleError(EdgeLSTMError):
    """A bundle is incomplete, of another schema version, or a file in it was changed."""


class ModelFileError(BundleError):
    """A model file of a bundle that an interpreter refuses, or that is not the model its
    manifest describes (input width, outputs, state); ``load(backend="auto")`` tries the next backend."""


class TargetError(EdgeLSTMError):
    """An unknown target profile, or a profile file with a bad field."""


class ConversionError(EdgeLSTMError):
    """The exporter could not produce a model file (the reason is in the message)."""


class InputError(EdgeLSTMError):
    """A reading given to the runtime is unusable: wrong feature count, not numbers, NaN or Inf."""


class BackendUnavailableError(EdgeLSTMError):
    """The requested backend (or the Edge TPU delegate) is not installed here; says what to install."""


class ConfigError(EdgeLSTMError):
    """A command-line option or configuration value is unusable (a bad sink spec, a port out of range, a missing file)."""


class SinkError(EdgeLSTMError):
    """A sink cannot deliver (broker refused us, TLS verification failed, disk full, ...): names the sink and the cause."""
