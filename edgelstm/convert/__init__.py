"""The workstation side: a trained model file becomes a bundle.

``importers`` read Keras 3, Keras 2 HDF5 and ONNX files into the shared network description
(:mod:`edgelstm.model`); ``recording`` runs the numpy reference over the calibration data
(``calibration_data`` reads it) and records every state; ``export`` writes TFLite and ONNX step
and window models and quantizes them; ``fidelity`` measures each against the reference;
``edgetpu`` checks an int8 model against the Edge TPU's rules; ``inspect`` describes files;
``sweep`` times every variant of a bundle; ``pipeline`` runs it all and writes the bundle.

Needs the ``convert`` extra (TensorFlow, onnx, onnxruntime, h5py); a device never imports it.
"""

from .pipeline import ConvertOptions, convert

__all__ = ["ConvertOptions", "convert"]
