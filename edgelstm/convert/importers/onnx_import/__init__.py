"""ONNX graphs exported from PyTorch (LSTM/GRU models), read into a :class:`~edgelstm.model.network.Network`.

``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``, and the ``torch.export``
based one, ``dynamo=True``) turns ``nn.LSTM``/``nn.GRU`` into ONNX ``LSTM``/``GRU`` ops wrapped
in glue: Transposes for ``batch_first``, Squeeze/Reshape of the ``[seq, num_dir, batch,
hidden]`` output, Concat of the per-layer ``h_n``, Shape/Gather/Slice/Concat arithmetic that
builds zero initial states and reshape targets, and the head (Gemm, MatMul + Add,
activations). This package lowers such a graph into a chain of layers.

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

from pathlib import Path

from edgelstm.errors import ModelFormatError, UnsupportedLayerError
from edgelstm.model.network import Network

from .lowering import _Lowering
from .onnx_file import external_data_files, read_model
from .values import SUPPORTED_OPS


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


__all__ = ["load_onnx", "read_model", "external_data_files", "SUPPORTED_OPS"]
