"""Exporters: a :class:`~edgelstm.model.network.Network` becomes step-model files.

Workstation side only (TensorFlow, onnx, onnxruntime.quantization); the runtime never
imports this package.
"""
