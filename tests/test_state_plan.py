"""Cell-state grouping is an exact rewrite: the float exports of a grouped plan equal the reference."""

from __future__ import annotations

import numpy as np

from edgelstm.convert.export.state_plan import StatePlan, permuted_network, plan_states
from edgelstm.convert.importers import load_network
from edgelstm.model.reference import Reference


def test_permuted_network_computes_the_same_function(keras, tmp_path, rng):
    L = keras.layers
    model = keras.Sequential([keras.Input((None, 3)), L.LSTM(6, return_sequences=True), L.LSTM(5), L.Dense(2)])
    model.save(tmp_path / "m.keras")
    network = load_network(tmp_path / "m.keras")
    magnitudes = {"c_0": (-np.arange(6.0), np.arange(6.0) ** 2), "c_1": (-np.ones(5), np.array([50.0, 1, 2, 0.1, 9]))}
    plan = plan_states(network, magnitudes, max_groups=3, ratio=2.0)
    assert [len(layer.groups) for layer in plan.layers] == [3, 3]
    assert plan.layers[1].groups[0].tolist() == [0]  # the unit reaching 50 gets a tensor of its own
    x = rng.normal(size=(2, 12, 3)).astype("float32")
    expected = Reference(network).predict(x)
    assert np.max(np.abs(Reference(permuted_network(network, plan)).predict(x) - expected)) < 1e-6
    single = StatePlan.single(network)
    assert single.state_names() == ["h_0", "c_0", "h_1", "c_1"]
    assert plan.state_names() == ["h_0", "c_0_0", "c_0_1", "c_0_2", "h_1", "c_1_0", "c_1_1", "c_1_2"]
