"""The device side: step models run one timestep per call, state kept between calls.

Imports numpy and one interpreter (LiteRT, tflite-runtime, tensorflow.lite or
onnxruntime); never the converting side of edgelstm, TensorFlow's converter, Keras or onnx.
"""
