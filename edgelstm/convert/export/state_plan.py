"""How each LSTM's state is laid out in the exported step model: cell-state groups by range.

A per-tensor int8 grid for the cell state ``c`` is too coarse when a few units range far
wider than the rest. Measured on the C-MAPSS example: one unit of the second layer spans
[-2, 49] (it counts cycles) while the other 31 stay within +-5.5; one int8 grid for all of
them made the int8 model's RMSE 39 % of the output's spread, a grid per unit 2.8 %
(numpy simulation on 30 test engines). TFLite and ONNX quantize activations per tensor, so
the exporter gives each *group* of units of similar range its own cell-state tensor:
units are sorted by the magnitude they reach during calibration and grouped greedily
(a group keeps units within ``ratio`` of its largest), at most ``max_groups`` per layer.

Inside the step model the layer's units are permuted so each group is contiguous, which
is an exact rewrite of the network (gate columns, recurrent rows and the next layer's
input rows move together). The hidden state ``h`` (always within (-1, 1)) stays one
tensor, ``h_k``, in permuted unit order; the cell state is ``c_k`` for one group or
``c_k_0, c_k_1, ...`` for several. The manifest records each tensor's original unit indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgelstm.errors import ConversionError
from edgelstm.model.network import DenseLayer, EmbeddingLayer, GRULayer, LSTMLayer, Network


@dataclass
class LayerPlan:
    units: int
    groups: list  # list of np.ndarray of original unit indices
    has_cell: bool = True  # LSTM: h and c; GRU: h only (always within (-1, 1), one tensor)

    @property
    def permutation(self) -> np.ndarray:
        return np.concatenate(self.groups)

    @property
    def sizes(self) -> list:
        return [len(g) for g in self.groups]


@dataclass
class StatePlan:
    layers: list  # one LayerPlan per recurrent layer (LSTM or GRU)

    @classmethod
    def single(cls, network: Network) -> "StatePlan":
        return cls([LayerPlan(l.units, [np.arange(l.units)], isinstance(l, LSTMLayer)) for l in network.recurrent_layers])

    def cell_names(self, k: int) -> list:
        if not self.layers[k].has_cell:
            return []
        groups = len(self.layers[k].groups)
        return [f"c_{k}"] if groups == 1 else [f"c_{k}_{j}" for j in range(groups)]

    def state_names(self) -> list:
        names = []
        for k in range(len(self.layers)):
            names += [f"h_{k}"] + self.cell_names(k)
        return names

    def input_names(self) -> list:
        return ["x"] + self.state_names()

    def output_names(self) -> list:
        return ["y"] + [f"{name}_out" for name in self.state_names()]

    def tensor_units(self) -> dict:
        """State tensor name -> original unit indices, in tensor order."""
        result = {}
        for k, layer in enumerate(self.layers):
            result[f"h_{k}"] = layer.permutation
            for name, group in zip(self.cell_names(k), layer.groups):
                result[name] = group
        return result

    def tensor_ranges(self, unit_ranges: dict) -> dict:
        """State tensor name -> (min, max) over its units, from the calibrator's per-unit ranges."""
        ranges = {}
        for name, units in self.tensor_units().items():
            layer = name.split("_")[1]
            lo, hi = unit_ranges[f"{name[0]}_{layer}"]
            ranges[name] = (float(np.min(lo[units])), float(np.max(hi[units])))
        return ranges

    def feed(self, sample: dict) -> dict:
        """A recorded step (``x``, ``h_k``, ``c_k`` in original order) in the model's layout."""
        out = {"x": sample["x"]}
        for name, units in self.tensor_units().items():
            layer = name.split("_")[1]
            out[name] = np.ascontiguousarray(sample[f"{name[0]}_{layer}"][:, units])
        return out

    def describe(self) -> list:
        return [
            {"name": name, "size": int(len(units)), "units": units.tolist()}
            for name, units in self.tensor_units().items()
        ]


def permutable(network: Network) -> bool:
    """Whether units can be permuted inside the step model: a chain whose layers after the first
    recurrent one are LSTM, GRU or Dense (each takes the permutation in its input rows). A graph
    (a residual Add reads two layers' units in one order) or a per-feature layer (LayerNormalization)
    keeps every layer in its own unit order, and so one cell-state group per LSTM."""
    return network.is_chain and all(isinstance(layer, (LSTMLayer, GRULayer, DenseLayer, EmbeddingLayer))
                                    for layer in network.layers)


def plan_states(network: Network, unit_ranges: dict, max_groups: int = 4, ratio: float = 2.0) -> StatePlan:
    """Group each layer's cell-state units by the magnitude they reach in calibration (one group
    per layer where units cannot be permuted: :func:`permutable`)."""
    if not permutable(network):
        max_groups = 1
    layers = []
    for k, layer in enumerate(network.recurrent_layers):
        if isinstance(layer, GRULayer):
            layers.append(LayerPlan(layer.units, [np.arange(layer.units)], has_cell=False))
            continue
        lo, hi = unit_ranges[f"c_{k}"]
        magnitude = np.maximum(np.abs(lo), np.abs(hi))
        order = np.argsort(-magnitude, kind="stable")
        groups, current = [], [order[0]]
        for unit in order[1:]:
            if magnitude[unit] * ratio < magnitude[current[0]] and len(groups) < max_groups - 1:
                groups.append(np.array(current))
                current = [unit]
            else:
                current.append(unit)
        groups.append(np.array(current))
        layers.append(LayerPlan(layer.units, [np.sort(g) for g in groups]))
    return StatePlan(layers)


def permuted_network(network: Network, plan: StatePlan) -> Network:
    """The same function with each LSTM's units in plan order (an exact rewrite); the network
    itself where no layer's units move."""
    if all(np.array_equal(layer.permutation, np.arange(layer.units)) for layer in plan.layers):
        return network
    if not permutable(network):
        raise ConversionError(f"{network.source_name or 'model'}: its units cannot be regrouped (a graph, or a "
                              "per-feature layer); convert with --cell-groups 1")
    layers, previous_perm, k = [], None, 0
    for layer in network.layers:
        if isinstance(layer, EmbeddingLayer):
            layers.append(layer)
            continue
        kernel = layer.kernel if previous_perm is None else layer.kernel[previous_perm]
        if isinstance(layer, LSTMLayer):
            perm = plan.layers[k].permutation
            columns = np.concatenate([gate * layer.units + perm for gate in range(4)])
            layers.append(
                LSTMLayer(
                    name=layer.name,
                    kernel=np.ascontiguousarray(kernel[:, columns]),
                    recurrent_kernel=np.ascontiguousarray(layer.recurrent_kernel[perm][:, columns]),
                    bias=layer.bias[columns],
                    activation=layer.activation,
                    recurrent_activation=layer.recurrent_activation,
                    return_sequences=layer.return_sequences,
                )
            )
            previous_perm = perm
            k += 1
        elif isinstance(layer, GRULayer):
            perm = plan.layers[k].permutation
            columns = np.concatenate([gate * layer.units + perm for gate in range(3)])
            layers.append(
                GRULayer(
                    name=layer.name,
                    kernel=np.ascontiguousarray(kernel[:, columns]),
                    recurrent_kernel=np.ascontiguousarray(layer.recurrent_kernel[perm][:, columns]),
                    bias=layer.bias[columns],
                    recurrent_bias=layer.recurrent_bias[columns],
                    activation=layer.activation,
                    recurrent_activation=layer.recurrent_activation,
                    return_sequences=layer.return_sequences,
                    reset_after=layer.reset_after,
                )
            )
            previous_perm = perm
            k += 1
        else:
            layers.append(DenseLayer(layer.name, np.ascontiguousarray(kernel), layer.bias, layer.activation))
            previous_perm = None
    return Network(network.n_features, layers, network.source_format, network.source_name, list(network.notes))


def group_columns(units: int, start: int, size: int, gates: int = 4) -> np.ndarray:
    """Gate columns (i, f, g, o; or a GRU's z, r, h) of the contiguous units ``start..start+size`` of a permuted layer."""
    return np.concatenate([gate * units + np.arange(start, start + size) for gate in range(gates)])


class ResidualCellPlan(StatePlan):
    """The plan with each LSTM cell-state tensor carried as two int8 tensors, ``c = c_hi + c_lo``.

    An int8 ``c`` on one grid loses the update ``f * c + i * g`` to rounding at every step, and
    the losses add up over the recurrence: on the C-MAPSS example the cell state's grid alone
    was 2.7 % of the output's spread. Here ``c_k`` (the hi part) keeps its grid and ``c_k_lo``
    holds the residual on a grid 255 times finer (``+-`` half a hi step); the step model updates
    them with int8 ops only (see :func:`..tflite_step.build_step_function`): no op ever rounds
    the whole ``c`` after an update. The float and ONNX exports keep the plain plan.

    ``gru_h``: a GRU layer's hidden state the same way, ``h_k`` (hi) and ``h_k_lo``
    (:func:`..tflite_step._residual_gru`); ``cells=False`` keeps the LSTM cells single.
    """

    LO_MARGIN = 1.05  # the residual's grid spans this many times +- half a hi step

    def __init__(self, base: StatePlan, ranges: dict, gru_h: bool = True, cells: bool = True):
        super().__init__(base.layers)
        from .tflite_ops import quant_params_for_range

        self.hi_ranges = dict(ranges)
        residual = []  # an LSTM's cell tensors; a GRU's hidden state (when gru_h)
        for k, layer in enumerate(self.layers):
            if layer.has_cell:
                residual += StatePlan.cell_names(self, k) if cells else []
            elif gru_h:
                residual.append(f"h_{k}")
        self.hi_grid = {name: quant_params_for_range(*ranges[name], "int8") for name in residual}

    def state_names(self) -> list:
        names = []
        for k in range(len(self.layers)):
            names.append(f"h_{k}")
            if f"h_{k}" in self.hi_grid:
                names.append(f"h_{k}_lo")
            for cell in self.cell_names(k):
                names += [cell, cell + "_lo"]
        return names

    def tensor_units(self) -> dict:
        result = super().tensor_units()
        for cell in self.hi_grid:
            result[cell + "_lo"] = result[cell]
        return {name: result[name] for name in self.state_names()}

    def tensor_ranges(self, unit_ranges=None) -> dict:
        ranges = {}
        for name in self.state_names():
            if name.endswith("_lo"):
                half = 0.5 * self.hi_grid[name[:-3]][0] * self.LO_MARGIN
                ranges[name] = (-half, half)
            else:
                ranges[name] = self.hi_ranges[name]
        return ranges

    def split(self, name: str, c: np.ndarray) -> tuple:
        """A float cell state as (hi on its int8 grid, the residual)."""
        scale, zero = self.hi_grid[name]
        hi = (np.clip(np.rint(c / scale) + zero, -128, 127) - zero) * scale
        return hi.astype(np.float32), (c - hi).astype(np.float32)

    def feed(self, sample: dict) -> dict:
        base = super().feed(sample)
        out = {}
        for name in self.state_names():
            if name.endswith("_lo"):
                continue
            if name in self.hi_grid:
                out[name], out[name + "_lo"] = self.split(name, base[name])
            else:
                out[name] = base[name]
        out["x"] = base["x"]
        return out

    def describe(self) -> list:
        return [dict(e, residual_of=e["name"][:-3]) if e["name"].endswith("_lo") else e for e in super().describe()]
