"""The graph's output resolved into the Network's layers (recurrent, timestep and dense)."""

from __future__ import annotations

import dataclasses

from edgelstm.errors import UnsupportedLayerError
from edgelstm.model.network import BidirectionalLayer, Network, TimestepLayer

from .values import Data, Head, InputPart, RnnOut, _is_int


class _Resolution:
    """The graph's output resolved into the Network's layers (recurrent, timestep and dense). A part of
    :class:`~.lowering._Lowering`."""

    # -- resolution into layers ----------------------------------------------------------------

    def _resolve(self, parts: tuple, where: str) -> tuple:
        """``(layers, is_sequence)`` computing the concatenation of ``parts``."""
        if len(parts) == 1 and isinstance(parts[0], InputPart):
            return [], True
        if len(parts) == 1 and isinstance(parts[0], Head):
            layers, sequence = self._resolve(parts[0].source, where)
            return layers + [dataclasses.replace(layer) for layer in parts[0].layers], sequence
        if parts and all(isinstance(p, RnnOut) for p in parts) and len({id(p.rnn) for p in parts}) == 1:
            return self._resolve_recurrent(parts, where)
        raise UnsupportedLayerError(
            f"{self.source}: {where}: combines {', '.join(self._part_text(p) for p in parts)}; only a chain of "
            "layers (each reading the whole output of the previous one) is supported"
        )

    def _part_text(self, part) -> str:
        if isinstance(part, InputPart):
            return "the model input"
        if isinstance(part, RnnOut):
            return f"direction {part.direction} of '{part.rnn.name}' ({part.when})"
        return f"a dense head over {len(part.source)} part(s)"

    def _resolve_recurrent(self, parts: tuple, where: str) -> tuple:
        rnn = parts[0].rnn
        whens = {p.when for p in parts}
        directions = [p.direction for p in parts]
        if "cell" in whens:
            raise UnsupportedLayerError(f"{self.source}: {where}: uses the cell state c_n of '{rnn.name}'; only hidden "
                                        "outputs (out or h_n) are supported")
        if "partial" in whens:
            return self._resolve_timestep(parts, where)
        if len(whens) != 1:
            raise UnsupportedLayerError(f"{self.source}: {where}: mixes per-timestep and final outputs of '{rnn.name}'")
        sequence = whens.pop() == "seq"
        before, before_sequence = self._resolve(rnn.source, f"the input of '{rnn.name}'")
        if not before_sequence:
            raise UnsupportedLayerError(f"{self.source}: '{rnn.name}' reads a single vector, not a sequence")
        if rnn.direction == "forward" and directions == [0]:
            return before + [rnn.layer(0, sequence, False, rnn.name)], sequence
        if rnn.direction == "reverse" and directions == [0]:
            if sequence:
                raise UnsupportedLayerError(
                    f"{self.source}: {where}: uses the per-timestep output of reverse-direction '{rnn.name}' in input "
                    "order; a go_backwards layer's sequence is in reading order, so only its final output is supported"
                )
            return before + [rnn.layer(0, False, True, rnn.name)], False
        if rnn.direction == "bidirectional" and directions == [0, 1]:
            forward = rnn.layer(0, sequence, False, f"{rnn.name}/forward")
            backward = rnn.layer(1, sequence, True, f"{rnn.name}/backward")
            return before + [BidirectionalLayer(rnn.name, forward, backward, "concat")], sequence
        raise UnsupportedLayerError(
            f"{self.source}: {where}: uses direction(s) {directions} of {rnn.direction} '{rnn.name}'; a bidirectional "
            "layer's output must be its forward and backward halves concatenated, in that order"
        )

    def _resolve_timestep(self, parts: tuple, where: str) -> tuple:
        """One timestep of a layer's output sequence at which some direction has read only part of
        the window: PyTorch's ``out[:, -1]`` after a bidirectional layer (its backward half has
        read only the last step there) or ``out[:, 0]``. Exact as the whole sequence followed by a
        :class:`TimestepLayer`, which makes the network a window model."""
        rnn = parts[0].rnn
        directions = [p.direction for p in parts]
        origin = next(p.origin for p in parts if p.when == "partial")
        if rnn.direction == "reverse" or not ({p.when for p in parts} <= {"final", "partial"}):
            raise UnsupportedLayerError(
                f"{self.source}: {origin}: takes a timestep of '{rnn.name}' at which it has read only part of the "
                "sequence; supported for forward and bidirectional layers (out[:, -1] or out[:, 0])"
            )
        before, before_sequence = self._resolve(rnn.source, f"the input of '{rnn.name}'")
        if not before_sequence:
            raise UnsupportedLayerError(f"{self.source}: '{rnn.name}' reads a single vector, not a sequence")
        index = -1 if next(p for p in parts if p.direction == 0).when == "final" else 0
        if rnn.direction == "forward" and directions == [0]:
            layers = [rnn.layer(0, True, False, rnn.name)]
        elif rnn.direction == "bidirectional" and directions == [0, 1]:
            forward = rnn.layer(0, True, False, f"{rnn.name}/forward")
            backward = rnn.layer(1, True, True, f"{rnn.name}/backward")
            layers = [BidirectionalLayer(rnn.name, forward, backward, "concat")]
        else:
            raise UnsupportedLayerError(
                f"{self.source}: {where}: uses direction(s) {directions} of {rnn.direction} '{rnn.name}'; a bidirectional "
                "layer's output must be its forward and backward halves concatenated, in that order"
            )
        step = TimestepLayer(f"{rnn.name}/timestep{index}", index, layers[-1].output_size)
        return before + layers + [step], False

    # -- the network ---------------------------------------------------------------------------

    def _network(self, output) -> Network:
        name = self.graph.output[0].name
        if not isinstance(output, Data):
            raise UnsupportedLayerError(f"{self.source}: output '{name}' is not computed from the model input")
        if self.rnn_count == 0:
            raise UnsupportedLayerError(f"{self.source}: no LSTM or GRU node found; edgelstm converts recurrent models")
        if "stack" in output.roles:
            raise UnsupportedLayerError(f"{self.source}: output '{name}' still has a direction/layer axis "
                                        f"{self._axes_text(output)}; expected (batch, [time,] features)")
        layers, sequence = self._resolve(output.parts, f"output '{name}'")
        roles = [r for r in output.roles if r != "unit"]
        expected = (["batch", "time", "feat"], ["time", "batch", "feat"]) if sequence else (["batch", "feat"],)
        if roles not in [list(e) for e in expected]:
            raise UnsupportedLayerError(f"{self.source}: output '{name}' has axes {self._axes_text(output)}; "
                                        "expected (batch, features) or (batch, time, features)")
        notes = [f"imported from ONNX (producer {self.model.producer_name or '?'} "
                 f"{self.model.producer_version or ''}, opset {self.opset})".replace(" ,", ",")]
        if self.time_tag == 0:
            notes.append(f"the model reads time-major input (time, batch, features) on '{self.input_name}'; "
                         "edgelstm feeds (batch, time, features)")
        if sequence and roles[0] == "time":
            notes.append(f"the model's output '{name}' is time-major (time, batch, features); edgelstm's is "
                         "(batch, time, features)")
        if self.state_inputs:
            notes.append(f"initial states come from graph input(s) {', '.join(repr(n) for n in self.state_inputs)}; "
                         "the converted step model starts from a zero state and carries its state between calls itself")
        if len(output.roles) != len(roles):
            notes.append(f"output '{name}' has extra size-1 axes {self._axes_text(output)}; edgelstm drops them")
        feat = self.input_axes[2].size
        n_features = int(feat) if _is_int(feat) else layers[0].input_size
        network = Network(n_features=n_features, layers=layers, source_format="onnx", source_name=self.source,
                          notes=notes)
        if network.mode == "window":
            static = int(self.time_size) if _is_int(self.time_size) else None
            network.window = self.window or static
            if self.window and static and self.window != static:
                network.notes.append(f"the graph fixes the time dimension to {static} steps; window {self.window} "
                                     "was given and is used")
        return network.validate()
