"""The calibrator: run the float reference over calibration sequences and record every step.

Quantizers need representative values of every input of the step model, including the
recurrent state. Random or zero states would give the wrong ranges; the states a model
actually visits come from running it. So the calibrator steps the numpy reference through
each (normalised) calibration sequence from a zero state and records ``(x_t, h, c)`` at
every step, plus the state after the last step. State ranges come from these trajectories.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgelstm.model.network import Network
from edgelstm.model.reference import Reference


@dataclass
class Recording:
    """Everything the exporters and the manifest need from calibration."""

    inputs: np.ndarray  # (steps, features), normalised
    states: dict  # state name -> (steps, size): the state *before* each step
    state_ranges: dict  # state name -> (min, max) over before and after every step
    unit_ranges: dict  # state name -> (min per unit, max per unit), same steps
    input_range: tuple  # per-feature (min, max) arrays of the normalised inputs

    @property
    def n_steps(self) -> int:
        return int(self.inputs.shape[0])

    def samples(self, limit: int, seed: int = 0) -> list:
        """At most ``limit`` recorded steps as feed dicts, drawn at random (seeded) from the recording."""
        count = self.n_steps
        if count > limit:
            index = np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))
        else:
            index = np.arange(count)
        feeds = []
        for t in index:
            feed = {"x": self.inputs[t : t + 1]}
            for name, values in self.states.items():
                feed[name] = values[t : t + 1]
            feeds.append(feed)
        return feeds


def record(network: Network, sequences: list, progress=None) -> Recording:
    """Step the reference through normalised ``sequences`` and record inputs and states."""
    reference = Reference(network)
    names = network.state_names()
    inputs, states = [], {name: [] for name in names}
    lows = {name: np.full(size, np.inf) for name, size in zip(names, network.state_sizes())}
    highs = {name: np.full(size, -np.inf) for name, size in zip(names, network.state_sizes())}
    for sequence in sequences:
        _, trajectory = reference.run_with_states(sequence)
        inputs.append(sequence)
        for k, name in enumerate(names):
            states[name].append(trajectory[k][:-1])
            lows[name] = np.minimum(lows[name], trajectory[k].min(axis=0))
            highs[name] = np.maximum(highs[name], trajectory[k].max(axis=0))
        if progress is not None:
            progress.update(1)
    all_inputs = np.concatenate(inputs).astype(np.float32)
    return Recording(
        inputs=all_inputs,
        states={name: np.concatenate(values).astype(np.float32) for name, values in states.items()},
        state_ranges={name: (float(lows[name].min()), float(highs[name].max())) for name in names},
        unit_ranges={name: (lows[name], highs[name]) for name in names},
        input_range=(all_inputs.min(axis=0), all_inputs.max(axis=0)),
    )
