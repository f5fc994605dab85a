"""Model files with limits: an archive member or a weight declared larger than the limit is
refused naming it, before it is read, and within seconds.

The zip bomb is real: a ``.keras`` archive whose weights member inflates to 3 GiB of zeros (it
used to end in a ``MemoryError`` after 71 s). The huge weight is a real Keras 3 archive whose
HDF5 declares a 200000 x 200000 kernel (149 GiB) with HDF5's own sparse storage, so the file
stays small. Each case runs in a subprocess with a deadline: a hang fails the test.
"""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile

import pytest

from .conftest import EXAMPLE_MODEL, ROOT


def _import(path, timeout=60, env=None) -> subprocess.CompletedProcess:
    code = ("import sys\nfrom edgelstm.convert.importers import load_network\nfrom edgelstm.errors import EdgeLSTMError\n"
            f"try:\n    load_network({str(path)!r})\nexcept EdgeLSTMError as exc:\n    print(exc); sys.exit(2)\n")
    import os

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def _with_member(tmp_path, name: str, write) -> object:
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(EXAMPLE_MODEL) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for member in source.namelist():
            if member != name:
                target.writestr(member, source.read(member))
        write(target)
    return path


def test_a_zip_bomb_is_refused_by_its_declared_size_at_once(tmp_path):
    def bomb(archive):
        info = zipfile.ZipInfo("model.weights.h5")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as member:
            block = bytes(64 << 20)
            for _ in range(48):  # 3 GiB of zeros, a few MB deflated
                member.write(block)

    path = _with_member(tmp_path, "model.weights.h5", bomb)
    assert path.stat().st_size < 20 << 20
    result = _import(path)
    assert result.returncode == 2, result.stderr
    assert "model.weights.h5 (declared uncompressed size) is 3221225472 bytes" in result.stdout
    assert "EDGELSTM_MAX_MODEL_BYTES" in result.stdout


def test_the_limit_is_overridable_and_a_member_bigger_than_declared_is_stopped_at_it(tmp_path):
    path = _with_member(tmp_path, "config.json", lambda a: a.writestr("config.json", b"[" * (1 << 20)))
    result = _import(path, env={"EDGELSTM_MAX_CONFIG_BYTES": "1000"})
    assert result.returncode == 2 and "config.json (declared uncompressed size) is 1048576 bytes" in result.stdout
    assert "EDGELSTM_MAX_CONFIG_BYTES" in result.stdout
    result = _import(path)  # within the default limit: a named error for what it is, nested too deeply
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


def test_a_weight_declared_huge_is_refused_before_it_is_read(tmp_path):
    h5py = pytest.importorskip("h5py")
    with zipfile.ZipFile(EXAMPLE_MODEL) as source:
        weights = source.read("model.weights.h5")
    buffer = io.BytesIO(weights)
    with h5py.File(buffer, "r+") as handle:
        layers = handle["layers"]
        first = sorted(layers)[0]
        variables = layers[first]["vars"]
        del variables["0"]
        variables.create_dataset("0", shape=(200_000, 200_000), dtype="float32", chunks=(1024, 1024))  # sparse: no bytes
    path = _with_member(tmp_path, "model.weights.h5", lambda a: a.writestr("model.weights.h5", buffer.getvalue()))
    assert path.stat().st_size < 20 << 20
    result = _import(path)
    assert result.returncode == 2, result.stderr
    assert "weight 0 (declared shape (200000, 200000)) is 160000000000 bytes" in result.stdout
