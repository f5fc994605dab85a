"""A fuzz suite: mutated manifests, state files, model archives and command lines.

Each property asserts the same thing: a hostile or broken input ends in a named
:class:`~edgelstm.errors.EdgeLSTMError` (or exit code 2 with one ``edgelstm: error:`` line),
never another exception, a traceback or a hang. Hypothesis drives the mutations with a fixed
budget (``max_examples``, a per-example deadline) and a fixed seed, so CI runs the same cases
every time and the suite stays within its time.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import edgelstm
from edgelstm.errors import EdgeLSTMError

from .conftest import EXAMPLE_MODEL

BUDGET = settings(max_examples=60, deadline=10_000, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: Values a mutation puts in place of a manifest field: every JSON type, edge numbers, paths.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.sampled_from([0, -1, 1e9, 1e308, -1e308, 0.5])
    | st.text(max_size=20) | st.sampled_from(["../x", "/etc/passwd", ".", "", "step_int8.tflite", "a" * 300]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)


def _paths(node, prefix=()):
    """Every path to a value in a JSON document (lists: their first three entries)."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node[:3]):
            yield from _paths(value, prefix + (index,))


@pytest.fixture(scope="module")
def pristine(cmapss_bundle):
    return json.loads((cmapss_bundle / "manifest.json").read_text())


@pytest.fixture(scope="module")
def all_paths(pristine):
    return [p for p in _paths(pristine) if p]


@BUDGET
@seed(15)
@given(data=st.data())
def test_a_mutated_manifest_is_refused_by_name_or_loads(data, pristine, all_paths, cmapss_bundle, tmp_path_factory):
    manifest = json.loads(json.dumps(pristine))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(all_paths), label="path")
        node = manifest
        try:
            for key in path[:-1]:
                node = node[key]
            if data.draw(st.booleans(), label="delete"):
                del node[path[-1]]
            else:
                node[path[-1]] = data.draw(JSON_VALUES, label="value")
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced the parent
    bundle = tmp_path_factory.mktemp("fuzz") / "b"
    shutil.copytree(cmapss_bundle, bundle)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    try:
        runtime = edgelstm.load(bundle)
        runtime.step(np.asarray(pristine["input"]["calibration_stats"]["mean"], np.float32))
    except EdgeLSTMError:
        pass


@BUDGET
@seed(16)
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 7)), min_size=1, max_size=8),
       cut=st.none() | st.integers(0, 10**9))
def test_a_damaged_state_file_is_refused_by_name_and_changes_nothing(flips, cut, cmapss_bundle, tmp_path_factory):
    runtime = edgelstm.load(cmapss_bundle, model="int8")
    folder = tmp_path_factory.mktemp("state")
    runtime.step(np.asarray(runtime.bundle.manifest["input"]["calibration_stats"]["mean"], np.float32))
    runtime.save_state(folder / "s.npz")
    data = bytearray((folder / "s.npz").read_bytes())
    for position, bit in flips:
        data[position % len(data)] ^= 1 << bit
    if cut is not None:
        data = data[: cut % len(data)]
    (folder / "s.npz").write_bytes(bytes(data))
    before = runtime.get_state()
    try:
        runtime.load_state(folder / "s.npz")
    except EdgeLSTMError:
        after = runtime.get_state()
        assert before["raw"].keys() == after["raw"].keys()
        assert all(np.array_equal(before["raw"][k], after["raw"][k]) for k in before["raw"])  # nothing changed


@pytest.fixture(scope="module")
def archive_members():
    with zipfile.ZipFile(EXAMPLE_MODEL) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@BUDGET
@seed(17)
@given(data=st.data())
def test_a_mutated_keras_archive_is_a_named_error(data, archive_members, tmp_path_factory):
    from edgelstm.convert.importers import load_network

    members = dict(archive_members)
    name = data.draw(st.sampled_from(sorted(members)), label="member")
    action = data.draw(st.sampled_from(["flip", "truncate", "drop", "replace_json"]), label="action")
    content = bytearray(members[name])
    if action == "flip" and content:
        for _ in range(data.draw(st.integers(1, 16))):
            content[data.draw(st.integers(0, len(content) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        members[name] = bytes(content)
    elif action == "truncate":
        members[name] = bytes(content[: data.draw(st.integers(0, len(content)))])
    elif action == "drop":
        del members[name]
    else:
        members[name] = json.dumps(data.draw(JSON_VALUES)).encode()
    path = tmp_path_factory.mktemp("keras") / "m.keras"
    with zipfile.ZipFile(path, "w") as archive:
        for member, payload in members.items():
            archive.writestr(member, payload)
    try:
        load_network(path)
    except EdgeLSTMError:
        pass


@pytest.fixture(scope="module")
def graph_archive(tmp_path_factory):
    """A functional graph (a residual Add, LayerNormalization, MultiHeadAttention, a Concatenate of
    the input) as a Keras 3 archive: its members and its config."""
    import keras

    L = keras.layers
    x = keras.Input((8, 3))
    first = L.GRU(4, return_sequences=True)(x)
    joined = L.LayerNormalization()(L.Add()([first, L.GRU(4, return_sequences=True)(first)]))
    attended = L.MultiHeadAttention(num_heads=2, key_dim=2)(joined, joined, use_causal_mask=True)
    model = keras.Model(x, L.Dense(1)(L.GlobalAveragePooling1D()(L.Concatenate()([attended, x]))))
    path = tmp_path_factory.mktemp("graph") / "g.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    return members, json.loads(members["config.json"])


@BUDGET
@seed(19)
@given(data=st.data())
def test_a_mutated_graph_config_is_a_named_error(data, graph_archive, tmp_path_factory):
    """Any field of a functional graph's config replaced or deleted (inbound nodes, names, call
    options, classes): loading ends in an EdgeLSTMError or a network, never another exception."""
    from edgelstm.convert.importers import load_network

    members, config = graph_archive
    config = json.loads(json.dumps(config))
    paths = [p for p in _paths(config) if p]
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(paths), label="path")
        parent = config
        try:
            for key in path[:-1]:
                parent = parent[key]
            if data.draw(st.booleans(), label="delete") and isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent[path[-1]] = data.draw(JSON_VALUES, label="value")
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    archive_path = tmp_path_factory.mktemp("graph") / "g.keras"
    with zipfile.ZipFile(archive_path, "w") as archive:
        for member, payload in members.items():
            archive.writestr(member, json.dumps(config).encode() if member == "config.json" else payload)
    try:
        load_network(archive_path)
    except EdgeLSTMError:
        pass


ARGUMENT_WORDS = st.sampled_from([
    "convert", "inspect", "run", "profile", "bridge", "targets", "bundle-add", "--quant", "int4", "int8",
    "--formats", "tflite", "--out", "/nonexistent/x", "--input", "nofile.csv", "--sink", "prometheus:abc",
    "mqtt://host:notaport", "--port", "loop://", "--bundle", "/nonexistent", "--rate", "-1", "--steps", "0",
    "--window", "1000000000", "--target", "nosuch", "--backend", "nosuch", "-1", "1e309", "", "--", "%s",
])


@BUDGET
@seed(18)
@given(argv=st.lists(ARGUMENT_WORDS, min_size=1, max_size=6))
def test_any_command_line_ends_in_a_message_never_a_traceback(argv):
    from edgelstm.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv + ["--duration", "0"] if argv[0] == "bridge" else argv)
        except SystemExit as exit_:  # argparse: usage errors are exit 2
            code = exit_.code
    assert code in (0, 1, 2), (argv, code, err.getvalue())
    assert "Traceback" not in err.getvalue() and "internal error" not in err.getvalue(), (argv, err.getvalue())
