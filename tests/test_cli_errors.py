"""A user's mistake on the command line is one line naming the problem and exit 2, never a traceback.

Arguments are checked before any work starts (a bad ``--quant`` is refused by the parser, a bad
``--sink`` before the bundle is opened); a module that a missing extra would install is named
with the extra; ``--debug`` brings the traceback back.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import ROOT, run_cli


def _refused(result, *words):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


def test_a_missing_input_file_is_named(cmapss_bundle):
    _refused(run_cli("run", cmapss_bundle, "--input", "nofile.csv", check=False), "nofile.csv", "No such file")


def test_an_unknown_quantization_is_refused_before_anything_runs(tmp_path):
    result = run_cli("convert", ROOT / "examples" / "cmapss_fd001_lstm.keras", "--calibration", "nothing.json",
                     "--out", tmp_path / "b", "--quant", "int4", check=False)
    _refused(result, "--quant", "int4", "int8")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("option, value", [("--formats", "tflite,pb"), ("--holdout", "1.5"), ("--cell-groups", "0"),
                                           ("--window", "ten")])
def test_bad_convert_options_are_refused_by_the_parser(tmp_path, option, value):
    result = run_cli("convert", "model.keras", "--calibration", "c.json", "--out", tmp_path / "b", option, value,
                     check=False)
    _refused(result, option)


@pytest.mark.parametrize("spec, words", [
    ("prometheus:abc", ["prometheus:abc", "not a number"]),
    ("prometheus:99999", ["99999", "1..65535"]),
    ("mqtt://host:notaport", ["mqtt://host:notaport", "port"]),
    ("kafka://broker", ["unknown sink", "kafka://broker"]),
    ("csv:/no/such/folder/out.csv", ["/no/such/folder", "does not exist"]),
])
def test_bad_sink_specs_are_refused_before_the_bundle_is_opened(spec, words):
    result = run_cli("bridge", "--port", "loop://", "--bundle", "/no/such/bundle", "--sink", spec, check=False)
    _refused(result, *words)


def test_a_missing_mqtt_ca_file_is_named():
    result = run_cli("bridge", "--port", "loop://", "--bundle", "/no/such/bundle", "--sink", "mqtts://broker",
                     "--mqtt-ca", "/no/ca.pem", check=False)
    _refused(result, "/no/ca.pem")


def test_a_prometheus_sink_may_name_its_address():
    from types import SimpleNamespace

    from firmware_bridge.cli import parse_sink

    args = SimpleNamespace(metrics_address="127.0.0.1", mqtt_ca=None)
    assert parse_sink("prometheus:0.0.0.0:9108", args) == ("prometheus", {"port": 9108, "address": "0.0.0.0"})
    assert parse_sink("prometheus", args) == ("prometheus", {"port": 9108, "address": "127.0.0.1"})


def _without(module: str, *argv) -> subprocess.CompletedProcess:
    """The CLI as a device-only install sees it: ``module`` cannot be imported."""
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from edgelstm.cli import main\n"
            f"sys.exit(main({list(map(str, argv))!r}))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_convert_without_the_convert_extra_names_it(tmp_path, cmapss_bundle):
    result = _without("tensorflow", "convert", ROOT / "examples" / "cmapss_fd001_lstm.keras", "--calibration",
                      ROOT / "calibration" / "cmapss-fd001.json", "--out", tmp_path / "b", "--quiet")
    _refused(result, "pip install 'edgelstm[convert]'")


def test_the_bridge_without_the_bridge_extra_names_it(cmapss_bundle):
    result = _without("serial", "bridge", "--port", "loop://", "--bundle", cmapss_bundle, "--duration", "1")
    _refused(result, "pip install 'edgelstm[bridge]'")


def test_an_internal_error_is_one_line_and_debug_shows_the_traceback(cmapss_bundle, tmp_path):
    state = tmp_path / "state.json"
    state.write_text("[1, 2, 3]")  # not a state file: whatever load_state raises, no traceback without --debug
    quiet = run_cli("run", cmapss_bundle, "--input", "-", "--state", state, check=False)
    assert quiet.returncode in (1, 2) and "Traceback" not in quiet.stderr and quiet.stderr.count("\n") == 1
    loud = subprocess.run([sys.executable, "-m", "edgelstm", "--debug", "run", str(cmapss_bundle), "--state", str(state)],
                          capture_output=True, text=True, cwd=ROOT, input="")
    assert loud.returncode != 0 and "Traceback" in loud.stderr


def _csv(tmp_path, header, rows) -> str:
    path = tmp_path / "readings.csv"
    path.write_text(",".join(header) + "\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in rows) + "\n")
    return str(path)


def _run_lines(result) -> list:
    import json

    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_a_header_with_a_typo_is_an_error_naming_the_missing_and_the_unknown_column(cmapss_bundle, tmp_path):
    import edgelstm

    features = edgelstm.load(cmapss_bundle).feature_names
    header = [f if f != "s7" else "s_7" for f in features]
    result = run_cli("run", cmapss_bundle, "--input", _csv(tmp_path, header, [[1.0] * 14]), check=False)
    _refused(result, "line 1", "missing s7", "unknown s_7", "--by-position")


def test_columns_are_mapped_by_name_in_any_order_and_extra_ones_dropped_when_named(cmapss_bundle, tmp_path):
    import numpy as np

    import edgelstm
    from edgelstm.convert.calibration_data import load_cmapss

    from .conftest import TEST_SET

    runtime = edgelstm.load(cmapss_bundle)
    engine = load_cmapss(TEST_SET).sequences[0][:8]
    expected = runtime.run(engine)[:, 0]
    order = list(reversed(range(14)))
    header = ["time"] + [runtime.feature_names[k] for k in order]
    rows = [[float(t)] + [row[k] for k in order] for t, row in enumerate(engine)]
    path = _csv(tmp_path, header, rows)
    _refused(run_cli("run", cmapss_bundle, "--input", path, check=False), "unknown time")
    result = run_cli("run", cmapss_bundle, "--input", path, "--ignore-column", "time")
    got = [line["y"][0] for line in _run_lines(result)]
    assert np.allclose(got, expected, atol=1e-4)
    positional = _csv(tmp_path, [f"c{k}" for k in range(14)], engine.tolist())
    result = run_cli("run", cmapss_bundle, "--input", positional, "--by-position")
    assert np.allclose([line["y"][0] for line in _run_lines(result)], expected, atol=1e-4)
