"""Keras files from before Keras 2.2: their configs and weights brought to Keras 2's form.

Keras before 2.2 wrote a Sequential model's config as a bare list of layers (no ``{"layers":
[...]}``), and Keras 1.x also used other argument names and, for its recurrent layers, other
weights: one array per gate (LSTM: ``W_i, U_i, b_i, W_c, U_c, b_c, W_f, U_f, b_f, W_o, U_o, b_o``;
GRU: ``W_z, U_z, b_z, W_r, U_r, b_r, W_h, U_h, b_h``) where Keras 2 stores one kernel, one
recurrent kernel and one bias with the gates in the order i, f, c, o (GRU z, r, h). Keras 1's
GRU applies its reset gate before the recurrent matrix: Keras 2's ``reset_after=False``.

Only what changes the model's answers is translated; training-only arguments (initialisers,
regularisers, constraints, dropout, ``consume_less``, ``unroll``) are dropped. An argument of a
Keras 1 layer that would change its answers and has no translation is refused by name.
"""

from __future__ import annotations

import numpy as np

from edgelstm.errors import UnsupportedLayerError

#: Keras 1 argument -> Keras 2 argument, per layer kind (the rest of the names are the same).
_RENAMED = {
    "Dense": {"output_dim": "units", "bias": "use_bias"},
    "LSTM": {"output_dim": "units", "inner_activation": "recurrent_activation", "bias": "use_bias"},
    "GRU": {"output_dim": "units", "inner_activation": "recurrent_activation", "bias": "use_bias"},
    "Convolution1D": {"nb_filter": "filters", "filter_length": "kernel_size", "subsample_length": "strides",
                      "border_mode": "padding", "bias": "use_bias"},
    "MaxPooling1D": {"pool_length": "pool_size", "stride": "strides", "border_mode": "padding"},
    "AveragePooling1D": {"pool_length": "pool_size", "stride": "strides", "border_mode": "padding"},
}
_CLASS_RENAMED = {"Convolution1D": "Conv1D"}
#: Training-only Keras 1 arguments: no effect on a trained model's answers.
_TRAINING_ONLY = {"init", "inner_init", "forget_bias_init", "W_regularizer", "U_regularizer", "b_regularizer",
                  "activity_regularizer", "W_constraint", "U_constraint", "b_constraint", "dropout_W", "dropout_U",
                  "consume_less", "unroll", "W_learning_rate_multiplier", "b_learning_rate_multiplier"}
#: Keras 1 arguments that change a layer's answers and are not translated.
_REFUSED = {"weights"}


def sequential_layers(config) -> list | None:
    """A Sequential config's layer list: Keras 2.2+ ``{"layers": [...]}``, or the bare list
    Keras 1.x and 2.0-2.1 wrote; ``None`` when it is neither."""
    if isinstance(config, list):
        return config
    if isinstance(config, dict) and isinstance(config.get("layers"), list):
        return config["layers"]
    return None


def upgrade_layer(class_name: str, config: dict, keras_major: int, where: str) -> tuple:
    """``(class_name, config)`` in Keras 2 terms for a layer written by ``keras_major``."""
    if keras_major >= 2:
        return class_name, config
    renamed = _RENAMED.get(class_name, {})
    upgraded = {}
    for key, value in config.items():
        if key in _TRAINING_ONLY:
            continue
        if key in _REFUSED and value is not None:
            raise UnsupportedLayerError(f"{where}: Keras 1 argument {key!r} is not supported")
        upgraded[renamed.get(key, key)] = value
    if class_name == "GRU":
        upgraded.setdefault("reset_after", False)  # Keras 1's GRU resets before the recurrent matrix
    if class_name == "Convolution1D" and upgraded.get("padding") == "full":
        raise UnsupportedLayerError(f"{where}: Keras 1 border_mode='full' is not supported (valid, same)")
    if "input_dim" in upgraded and "batch_input_shape" not in upgraded:  # Keras 1's first layer
        upgraded["batch_input_shape"] = [None, upgraded.get("input_length"), upgraded["input_dim"]]
    return _CLASS_RENAMED.get(class_name, class_name), upgraded


def merge_recurrent_weights(class_name: str, weights: list, keras_major: int) -> list:
    """Keras 1's per-gate arrays as Keras 2's ``[kernel, recurrent_kernel, bias]`` (gate order
    i, f, c, o for an LSTM; z, r, h for a GRU); Keras 2+ weights unchanged."""
    if keras_major >= 2:
        return weights
    if class_name == "LSTM" and len(weights) == 12:
        (w_i, u_i, b_i, w_c, u_c, b_c, w_f, u_f, b_f, w_o, u_o, b_o) = weights
        return [np.concatenate([w_i, w_f, w_c, w_o], axis=1), np.concatenate([u_i, u_f, u_c, u_o], axis=1),
                np.concatenate([b_i, b_f, b_c, b_o])]
    if class_name == "GRU" and len(weights) == 9:
        (w_z, u_z, b_z, w_r, u_r, b_r, w_h, u_h, b_h) = weights
        return [np.concatenate([w_z, w_r, w_h], axis=1), np.concatenate([u_z, u_r, u_h], axis=1),
                np.concatenate([b_z, b_r, b_h])]
    return weights
