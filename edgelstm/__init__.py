"""edgelstm: LSTM models from the workstation to small Linux devices."""

__version__ = "0.1.0"

