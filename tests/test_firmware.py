"""The MCU-side C encoder of the frame protocol (firmware_bridge/firmware/) against the Python one.

``edgelstm_frame.c`` is compiled with the host gcc (strict C99, warnings as errors) together
with ``test_harness.c``, a small program that reads encode commands from stdin (floats as
their bit patterns in hex, so nothing is lost in decimal) and prints each frame as hex. Every
case of ``test_vectors.json`` must come out byte for byte as the Python reference encoder
(``firmware_bridge.protocol.encode_frame``) makes it, and the JSON itself must still be what
``make_test_vectors.py`` and the current Python encoder produce. Random frames, COBS and
CRC edge cases, the int16 quantiser, buffer-size checks and ``ELF_MAX_FRAME_BYTES`` are
compared the same way, and the C frames are decoded with ``FrameDecoder``. Finally the Arduino
sketch is compiled with g++ against a stub ``Arduino.h`` (fake clock starting just before
the 32-bit ``micros()`` wrap, fake ADC, recording ``Serial``) and its output is decoded.

Tests that need gcc (or g++) skip when it is missing; everything is built in tmp paths.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from cobs import cobs

from firmware_bridge.protocol import FLOAT32, INT16, MAX_FRAME_BYTES, RESTARTED, FrameDecoder, encode_frame

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware_bridge" / "firmware"
SRC = FIRMWARE / "src"
FRAME_C = SRC / "edgelstm_frame.c"
FRAME_H = SRC / "edgelstm_frame.h"
HARNESS_C = FIRMWARE / "extras" / "test_harness.c"
VECTORS = FIRMWARE / "extras" / "test_vectors.json"
SKETCH_DIR = FIRMWARE / "examples" / "edgelstm_sensor"
SKETCH = SKETCH_DIR / "edgelstm_sensor.ino"

GCC = shutil.which("gcc")
GXX = shutil.which("g++")
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror"]
# Warnings that matter on 8/16-bit MCUs (implicit narrowing with a 16-bit int, ...).
EXTRA = [
    "-Wconversion",
    "-Wsign-conversion",
    "-Wshadow",
    "-Wcast-align",
    "-Wcast-qual",
    "-Wstrict-prototypes",
    "-Wmissing-prototypes",
    "-Wdouble-promotion",
    "-Wundef",
    "-Wvla",
]

needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc not found")
needs_gxx = pytest.mark.skipif(GCC is None or GXX is None, reason="gcc/g++ not found")


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=60, **kwargs)
    if result.returncode != 0:
        command = " ".join(map(str, cmd))
        raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    assert result.stderr == "", result.stderr  # warning-free, even where -Werror would not catch it
    return result


def load_cases() -> list:
    return json.loads(VECTORS.read_text(encoding="utf-8"))


CASES = load_cases()


def _case_id(case) -> str:
    return case["name"]


def f32_bits(values) -> np.ndarray:
    return np.asarray(values, np.float32).view(np.uint32)


def frame_command(encoding, sequence, timestamp_us, bits_or_raw, scale_bits=0, capacity="-", channels=None, flags=0) -> str:
    """One harness line; float32 values as uint32 bit patterns, int16 values as ints."""
    items = [int(v) for v in bits_or_raw]
    count = len(items) if channels is None else channels
    if encoding == FLOAT32:
        return f"F {capacity} {flags} {sequence} {timestamp_us} {count} " + " ".join(f"{b:08x}" for b in items)
    return f"I {capacity} {flags} {sequence} {timestamp_us} {count} {scale_bits:08x} " + " ".join(map(str, items))


def case_command(case, capacity="-") -> str:
    if case["encoding"] == FLOAT32:
        bits = f32_bits(case["values"])
        return frame_command(FLOAT32, case["sequence"], case["timestamp_us"], bits, capacity=capacity, flags=case["flags"])
    scale_bits = int(f32_bits([case["scale"]])[0])
    return frame_command(INT16, case["sequence"], case["timestamp_us"], case["raw"], scale_bits, capacity=capacity,
                         flags=case["flags"])


def frame_of(line: str) -> bytes:
    """Parse a harness result line ``<length> <hex>``."""
    assert not line.startswith(("ERROR", "OVERRUN")), line
    length, hexed = line.split(" ")
    if int(length) == 0:
        assert hexed == "-"
        return b""
    data = bytes.fromhex(hexed)
    assert len(data) == int(length)
    return data


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    if GCC is None:
        pytest.skip("gcc not found")
    exe = tmp_path_factory.mktemp("firmware") / "harness"
    _run([GCC, *STRICT, "-O2", "-I", SRC, FRAME_C, HARNESS_C, "-o", exe])
    return exe


def run_harness(exe: Path, lines: list) -> list:
    result = _run([exe], input="\n".join(lines) + "\n")
    out = result.stdout.splitlines()
    assert len(out) == len(lines), result.stdout[-2000:]
    return out


@pytest.fixture(scope="module")
def macros(harness) -> dict:
    (line,) = run_harness(harness, ["M"])
    numbers = [int(x) for x in line.split()]
    assert len(numbers) == 1 + 64 + 64
    return {
        "max": numbers[0],
        "float32": dict(zip(range(1, 65), numbers[1:65])),
        "int16": dict(zip(range(1, 65), numbers[65:])),
    }


# ---------------------------------------------------------------- the vectors file (Python only)


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_test_vectors", FIRMWARE / "extras" / "make_test_vectors.py")
    module = importlib.util.module_from_spec(spec)
    dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in the repo
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write
    return module


def test_vectors_file_is_what_the_generator_writes():
    """Regenerating gives the same bytes: inputs and expectations are not hand-edited or stale."""
    generator = _load_generator()
    assert generator.render(generator.build_cases()) == VECTORS.read_text(encoding="utf-8")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_vectors_match_the_python_encoder(case):
    """The expected frames are what encode_frame() produces today, and the inputs are consistent."""
    values = np.asarray(case["values"], np.float64)
    assert len(values) == case["channels"]
    assert f32_bits(values).tolist() == [int(b, 16) for b in case["values_f32_bits"]]
    assert np.array_equal(values, values.astype(np.float32).astype(np.float64))  # exactly float32
    if case["encoding"] == FLOAT32:
        frame = encode_frame(case["sequence"], case["timestamp_us"], values.astype(np.float32), flags=case["flags"])
    else:
        scale = case["scale"]
        assert float(np.float32(scale)) == scale and f"{int(f32_bits([scale])[0]):08x}" == case["scale_f32_bits"]
        raw = np.clip(np.rint(values / scale), -32768, 32767).astype(np.int16)
        assert raw.tolist() == case["raw"]
        frame = encode_frame(case["sequence"], case["timestamp_us"], values, encoding=INT16, scale=scale, flags=case["flags"])
    assert frame.hex() == case["frame_hex"]


def test_vectors_cover_the_edge_cases():
    by_name = {case["name"]: case for case in CASES}
    assert len(by_name) == len(CASES)
    assert {1, 24, 64} <= {case["channels"] for case in CASES if case["encoding"] == FLOAT32}
    assert {1, 24, 64} <= {case["channels"] for case in CASES if case["encoding"] == INT16}
    assert {0, 65535} <= {case["sequence"] for case in CASES}
    assert {0, RESTARTED} == {case["flags"] for case in CASES}
    assert {case["encoding"] for case in CASES if case["flags"] == RESTARTED} == {FLOAT32, INT16}
    stamps = {case["timestamp_us"] for case in CASES}
    assert {2**32 - 1, 2**32, 2**32 + 1, 2**64 - 1} <= stamps
    raws = [r for case in CASES if case["encoding"] == INT16 for r in case["raw"]]
    assert 32767 in raws and -32768 in raws
    bits = {int(b, 16) for case in CASES if case["encoding"] == FLOAT32 for b in case["values_f32_bits"]}
    assert {0x80000000, 0x00000001, 0x7F7FFFFF} <= bits  # -0.0, subnormal, largest
    runs = []
    for case in CASES:
        raw = cobs.decode(bytes.fromhex(case["frame_hex"])[1:-1])
        runs.append(max(len(run) for run in raw.split(b"\x00")))
        assert raw.count(0) >= 1 or case["encoding"] == INT16
    assert max(runs) > 255 and {254, 255} <= set(runs)  # past COBS's block boundary, exactly on it, one past


# ---------------------------------------------------------------- compiling the C encoder


@needs_gcc
def test_encoder_compiles_warning_free_alone(tmp_path):
    _run([GCC, *STRICT, "-fsyntax-only", FRAME_C])
    _run([GCC, *STRICT, *EXTRA, "-Os", "-c", FRAME_C, "-o", tmp_path / "frame_os.o"])
    _run([GCC, *STRICT, *EXTRA, "-O0", "-ffreestanding", "-c", FRAME_C, "-o", tmp_path / "frame_o0.o"])
    # The header is included from C++ (the Arduino sketch): it must be clean there too.
    if GXX is not None:
        _run([GXX, "-std=c++11", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-x", "c++", "-fsyntax-only", FRAME_H])
    # No malloc, no stdio, no libm: at most memcpy/memset are left for the C library.
    nm = shutil.which("nm")
    if nm is not None:
        for obj in ("frame_os.o", "frame_o0.o"):
            undefined = set(_run([nm, "-u", tmp_path / obj]).stdout.split()) - {"U"}
            assert undefined <= {"memcpy", "memset"}, undefined


def test_encoder_includes_only_portable_headers():
    for path in (FRAME_C, FRAME_H):
        includes = re.findall(r"^\s*#\s*include\s*[<\"]([^>\"]+)[>\"]", path.read_text(), re.M)
        assert set(includes) <= {"stdint.h", "stddef.h", "string.h", "edgelstm_frame.h"}, (path.name, includes)
        code = re.sub(r"/\*.*?\*/|//[^\n]*", "", path.read_text(), flags=re.S)
        for banned in ("malloc", "free(", "printf", "stdio", "htole", "__BYTE_ORDER", "union"):
            assert banned not in code, (path.name, banned)


# ---------------------------------------------------------------- C against the vectors


@needs_gcc
def test_c_encoder_reproduces_every_vector(harness):
    out = run_harness(harness, [case_command(case) for case in CASES])
    for case, line in zip(CASES, out):
        assert frame_of(line).hex() == case["frame_hex"], case["name"]


@needs_gcc
def test_c_frames_decode_in_python(harness, macros):
    out = run_harness(harness, [case_command(case) for case in CASES])
    for case, line in zip(CASES, out):
        frame = frame_of(line)
        assert frame[0] == 0 and frame[-1] == 0 and 0 not in frame[1:-1]
        key = "float32" if case["encoding"] == FLOAT32 else "int16"
        assert len(frame) <= macros[key][case["channels"]]
        decoder = FrameDecoder()
        (decoded,) = decoder.feed(frame)
        assert decoder.counters.good == 1 and decoder.counters.malformed == decoder.counters.crc_failed == 0
        assert decoded.sequence == case["sequence"] and decoded.timestamp_us == case["timestamp_us"]
        assert decoded.flags == case["flags"] and decoded.version == 2
        assert decoded.encoding == case["encoding"] and decoded.values.dtype == np.float32
        if case["encoding"] == FLOAT32:  # bit-exact: -0.0 stays -0.0
            assert decoded.values.view(np.uint32).tolist() == [int(b, 16) for b in case["values_f32_bits"]]
        else:
            scale = np.float32(case["scale"])
            assert decoded.scale == case["scale"]
            expected = np.asarray(case["raw"], np.int16).astype(np.float32) * scale
            assert decoded.values.view(np.uint32).tolist() == expected.view(np.uint32).tolist()


@needs_gcc
def test_c_quantize_matches_python(harness):
    lines, expected = [], []
    for case in CASES:
        if case["encoding"] == INT16:
            lines.append(f"Q {case['scale_f32_bits']} " + " ".join(case["values_f32_bits"]))
            expected.append(case["raw"])
    rng = np.random.default_rng(1234)
    specials = np.array([0.0, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, 32766.5, 32767.5, -32768.5, -32767.5, np.inf, -np.inf])
    for scale in (1.0, 0.5, 0.25, 0.01, 0.001, 1e-3 / 3, 3.0, 1e-30, 1e30, -0.5):
        scale = np.float32(scale)
        values = np.concatenate(
            [
                specials.astype(np.float32) * scale,  # ties and limits in units of scale
                (rng.integers(-40000, 40000, 300) + 0.5).astype(np.float32) * scale,  # more ties
                (rng.standard_normal(300) * 20000).astype(np.float32) * scale,
                rng.integers(0, 2**32, 100, dtype=np.uint64).astype(np.uint32).view(np.float32),  # any bits
            ]
        ).astype(np.float32)
        values = values[~np.isnan(values)]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            raw = np.clip(np.rint(values.astype(np.float64) / np.float64(scale)), -32768, 32767).astype(np.int16)
        lines.append(f"Q {int(f32_bits([scale])[0]):08x} " + " ".join(f"{b:08x}" for b in values.view(np.uint32)))
        expected.append(raw.tolist())
    out = run_harness(harness, lines)
    for line, want in zip(out, expected):
        assert [int(x) for x in line.split()] == want


@needs_gcc
def test_c_encoder_matches_python_on_random_frames(harness, macros):
    rng = np.random.default_rng(20240611)
    lines, expected = [], []
    for i in range(400):
        channels = int(rng.integers(1, 65)) if i % 4 else 64
        sequence = int(rng.integers(0, 65536))
        timestamp = int(rng.integers(0, 2**64, dtype=np.uint64))
        flags = int(rng.integers(0, 2)) * RESTARTED
        if i % 2 == 0:  # float32: random bit patterns (NaN, inf included), some zero bytes, some none
            bits = rng.integers(0, 2**32, channels, dtype=np.uint64).astype(np.uint32)
            if i % 3 == 0:
                bits |= np.uint32(0x01010101)
            elif i % 3 == 1:
                bits &= np.uint32(0xFF00FF00)
            lines.append(frame_command(FLOAT32, sequence, timestamp, bits, flags=flags))
            expected.append(encode_frame(sequence, timestamp, bits.view(np.float32), flags=flags))
        else:  # int16: raw values and any float32 scale (Python quantises raw * 1.0 to itself)
            raw = rng.integers(-32768, 32768, channels).astype(np.int16)
            if i % 3 == 0:
                raw[rng.random(channels) < 0.3] = 0
            scale_bits = int(rng.integers(0, 2**32))
            lines.append(frame_command(INT16, sequence, timestamp, raw, scale_bits, flags=flags))
            payload = struct.pack("<BBBHQB", 2, INT16, flags, sequence, timestamp, channels)
            payload += struct.pack("<I", scale_bits) + raw.astype("<i2").tobytes()
            # the reference path: encode_frame with scale 1.0 gives the same values bytes
            reference = encode_frame(sequence, timestamp, raw.astype(np.float64), encoding=INT16, scale=1.0, flags=flags)
            ref_raw = cobs.decode(reference[1:-1])
            assert ref_raw[:14] == payload[:14] and ref_raw[18:-4] == payload[18:]
            expected.append(b"\x00" + cobs.encode(payload + struct.pack("<I", zlib.crc32(payload))) + b"\x00")
    out = run_harness(harness, lines)
    for line, want, command in zip(out, expected, lines):
        got = frame_of(line)
        assert got == want, command
        key = "float32" if command[0] == "F" else "int16"
        assert len(got) <= macros[key][int(command.split()[5])]


@needs_gcc
def test_c_cobs_and_crc_match_the_python_libraries(harness):
    rng = np.random.default_rng(99)
    inputs = [b"", b"\x00", b"\x00\x00", b"\x01", b"\x11\x00", b"\x00\x11"]
    for n in (253, 254, 255, 256, 507, 508, 509, 762, 1000):
        inputs.append(b"\x01" * n)
        inputs.append(b"\x01" * n + b"\x00")
        inputs.append(b"\x00" + b"\x02" * n)
    for _ in range(200):
        n = int(rng.integers(0, 1000))
        data = rng.integers(0, 256, n, dtype=np.uint8)
        if rng.random() < 0.5:
            data[data == 0] = 7  # long zero-free runs
        inputs.append(data.tobytes())
    lines = [f"C - {data.hex() or '-'}" for data in inputs] + [f"K {data.hex() or '-'}" for data in inputs]
    out = run_harness(harness, lines)
    for data, line in zip(inputs, out[: len(inputs)]):
        assert frame_of(line) == cobs.encode(data), len(data)
        bound = 1 if not data else len(data) + (len(data) + 253) // 254  # ELF_COBS_MAX_ENCODED
        assert len(cobs.encode(data)) <= bound
    for data, line in zip(inputs, out[len(inputs) :]):
        assert int(line, 16) == zlib.crc32(data)
    # capacity: exactly the worst case is enough, one less is refused (and nothing overruns)
    lines = []
    for n in (0, 1, 254, 255, 600):
        bound = 1 if n == 0 else n + (n + 253) // 254
        lines += [f"C {bound} {'05' * n or '-'}", f"C {bound - 1} {'05' * n or '-'}"]
    out = run_harness(harness, lines)
    for n, ok, refused in zip((0, 1, 254, 255, 600), out[::2], out[1::2]):
        assert frame_of(ok) == cobs.encode(b"\x05" * n)
        assert refused == "0 -"


# ---------------------------------------------------------------- buffer sizes


@needs_gcc
def test_too_small_buffer_or_bad_channel_count_returns_zero(harness, macros):
    lines, wants = [], []
    for channels in (1, 5, 24, 63, 64):
        bits = [0x3F8CCCCD] * channels
        raw = [1234] * channels
        for encoding, values, scale in ((FLOAT32, bits, 0), (INT16, raw, 0x3C23D70A)):
            need = macros["float32" if encoding == FLOAT32 else "int16"][channels]
            for capacity, ok in ((need, True), (need - 1, False), (0, False)):
                lines.append(frame_command(encoding, 1, 2, values, scale, capacity=capacity))
                wants.append(ok)
    for encoding, scale in ((FLOAT32, 0), (INT16, 0x3F800000)):
        lines.append(frame_command(encoding, 1, 2, [], scale, channels=0))  # no channels
        lines.append(frame_command(encoding, 1, 2, [1] * 65, scale))  # 65 channels
        lines.append(frame_command(encoding, 1, 2, [1] * 255, scale))
        wants += [False, False, False]
    out = run_harness(harness, lines)  # frame_of() rejects OVERRUN: nothing is written past capacity
    for command, line, ok in zip(lines, out, wants):
        assert (len(frame_of(line)) > 0) == ok, command
        assert line != "OVERRUN"


def _zero_free_frame(encoding: int, channels: int) -> bytes:
    """Python's frame for ``channels`` values whose payload has no zero byte but the unavoidable one.

    float32 frames always carry one 0x00 (the encoding byte); int16 frames can be zero-free
    (both with the RESTARTED flag, else the flags byte is a second 0x00). The last value's low
    byte is adjusted until the CRC is zero-free as well.
    """
    sequence, timestamp = 0x0101, 0x0102030405060708
    for low in range(1, 256):
        if encoding == FLOAT32:
            bits = np.full(channels, 0x3F8CCCCD, np.uint32)
            bits[-1] = (bits[-1] & 0xFFFFFF00) | low
            frame = encode_frame(sequence, timestamp, bits.view(np.float32), flags=RESTARTED)
        else:
            scale = float(np.uint32(0x3F8CCCCD).view(np.float32))  # about 1.1, no zero byte
            raw = np.full(channels, 0x0101 * 3, np.int64)
            raw[-1] = 0x0100 | low
            frame = encode_frame(sequence, timestamp, raw * scale, encoding=INT16, scale=scale, flags=RESTARTED)
            assert cobs.decode(frame[1:-1])[18:-4] == raw.astype("<i2").tobytes()
        payload = cobs.decode(frame[1:-1])
        if payload.count(0) == (1 if encoding == FLOAT32 else 0):
            return frame
    raise AssertionError("no zero-free frame found")


@needs_gcc
def test_max_frame_bytes_is_the_tight_worst_case(macros):
    """ELF_MAX_FRAME_BYTES is exactly the longest frame Python makes (64 float32 channels)."""
    longest = _zero_free_frame(FLOAT32, 64)
    assert macros["max"] == len(longest) == 278
    assert macros["max"] == macros["float32"][64] == max([*macros["float32"].values(), *macros["int16"].values()])
    # and every per-channel-count macro is reached too, in both encodings
    for channels in range(1, 65):
        assert macros["float32"][channels] == len(_zero_free_frame(FLOAT32, channels)), channels
        assert macros["int16"][channels] == len(_zero_free_frame(INT16, channels)), channels
    # the Python receiver accepts the longest frame (its limit excludes the two delimiters)
    assert macros["max"] - 2 <= MAX_FRAME_BYTES
    decoder = FrameDecoder()
    assert len(decoder.feed(longest)) == 1


@needs_gcc
def test_stream_with_noise_and_sequence_wrap_decodes(harness):
    """Back-to-back C frames across the 65535 -> 0 wrap, after line noise, decode without gaps."""
    sequences = [65533, 65534, 65535, 0, 1, 2]
    lines = [frame_command(FLOAT32, s, 2**32 - 3 + k, [0x3F800000 + k, 0]) for k, s in enumerate(sequences)]
    frames = [frame_of(line) for line in run_harness(harness, lines)]
    noise = b"\x13\x37 bootloader garbage \xff\xfe" + frames[0][1:30]  # ends mid-frame
    decoder = FrameDecoder()
    decoded = []
    stream = noise + b"".join(frames)
    for start in range(0, len(stream), 7):  # arbitrary chunking
        decoded += decoder.feed(stream[start : start + 7])
    assert [f.sequence for f in decoded] == sequences
    assert [f.timestamp_us for f in decoded] == [2**32 - 3 + k for k in range(len(sequences))]
    assert decoder.counters.good == len(sequences)
    assert decoder.counters.dropped == decoder.counters.duplicates == 0
    assert decoder.counters.malformed + decoder.counters.crc_failed == 1  # the noise, once


# ---------------------------------------------------------------- the Arduino sketch


def test_the_firmware_is_an_arduino_library_with_one_copy_of_the_encoder():
    """Laid out as the Arduino library specification (1.5) wants it, so the Arduino IDE,
    arduino-cli and PlatformIO install it from the folder; the encoder exists once."""
    properties = dict(
        line.split("=", 1) for line in (FIRMWARE / "library.properties").read_text().splitlines() if "=" in line
    )
    required = ("name", "version", "author", "maintainer", "sentence", "paragraph", "category", "url", "architectures")
    assert [key for key in required if not properties.get(key)] == []
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 _.-]*", properties["name"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", properties["version"])
    assert properties["category"] in ("Display", "Communication", "Signal Input/Output", "Sensors", "Device Control",
                                      "Timing", "Data Storage", "Data Processing", "Other")
    for header in properties.get("includes", "").split(","):
        assert (SRC / header.strip()).is_file()
    assert SKETCH.is_file() and SKETCH.parent.parent.name == "examples"
    assert '#include <edgelstm_frame.h>' in SKETCH.read_text()  # found through the library, not a relative path
    assert sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("firmware_bridge/**/edgelstm_frame.[ch]")) == [
        "firmware_bridge/firmware/src/edgelstm_frame.c", "firmware_bridge/firmware/src/edgelstm_frame.h"]


ARDUINO_STUB = r"""
#pragma once
#include <stddef.h>
#include <stdint.h>
enum : uint8_t { A0 = 14, A1, A2, A3, A4, A5 };
unsigned long micros();
int analogRead(uint8_t pin);
class FakeSerial {
public:
    void begin(unsigned long baud);
    size_t write(uint8_t byte);
    size_t write(const uint8_t *buffer, size_t size);
};
extern FakeSerial Serial;
"""

SIMULATION = r"""
#include "Arduino.h"
#include "edgelstm_sensor.ino"
#include <stdio.h>

static const uint64_t START = 4294967296ull - 35000ull;  /* 35 ms before micros() wraps */
static uint64_t fake_clock = START;
static unsigned long baud = 0;
static unsigned char sent[1 << 20];
static size_t sent_bytes = 0;
static unsigned frames_written = 0;
static const int ADC[] = {338, 400, 700, 512, 153, 0};

unsigned long micros() { fake_clock += 37; return (unsigned long)(uint32_t)fake_clock; }
int analogRead(uint8_t pin) { fake_clock += 100; return ADC[pin - A0]; }
FakeSerial Serial;
void FakeSerial::begin(unsigned long b) { baud = b; }
size_t FakeSerial::write(uint8_t byte) { sent[sent_bytes++] = byte; return 1; }
size_t FakeSerial::write(const uint8_t *buffer, size_t size) {
    for (size_t i = 0; i < size; ++i) sent[sent_bytes++] = buffer[i];
    if (++frames_written == 40) fake_clock += 35000;  /* one stall: the loop falls 3.5 periods behind */
    return size;
}

int main() {
    setup();
    while (fake_clock < START + 1000000ull) loop();
    printf("%lu %lu %u %lu %lu %.9g %.9g %.9g\n", baud, (unsigned long)SAMPLE_PERIOD_US, (unsigned)NUM_CHANNELS,
           (unsigned long)missed_slots, (unsigned long)START, (double)ADC_REF_VOLTS, (double)ADC_FULL_SCALE,
           (double)INT16_SCALE);
    for (unsigned i = 0; i < NUM_CHANNELS; ++i)
        printf("%d %.9g %.9g\n", ADC[CHANNELS[i].pin - A0], (double)CHANNELS[i].zero_volts,
               (double)CHANNELS[i].volts_per_unit);
    for (size_t i = 0; i < sent_bytes; ++i) printf("%02x", sent[i]);
    printf("\n");
    return 0;
}
"""


@needs_gxx
@pytest.mark.parametrize("send_int16", [0, 1], ids=["float32", "int16"])
def test_sketch_compiles_and_streams_decodable_frames(tmp_path, send_int16):
    (tmp_path / "Arduino.h").write_text(ARDUINO_STUB)
    (tmp_path / "sim.cpp").write_text(SIMULATION)
    cxx_flags = ["-std=gnu++11", "-Wall", "-Wextra", "-Wpedantic", "-Werror", f"-DEDGELSTM_SEND_INT16={send_int16}"]
    _run([GCC, *STRICT, "-O1", "-c", FRAME_C, "-o", tmp_path / "frame.o"])
    sources = [tmp_path / "sim.cpp", tmp_path / "frame.o"]
    # include paths as the Arduino builder sets them: the sketch folder and the library's src/
    _run([GXX, *cxx_flags, "-O1", "-I", tmp_path, "-I", SKETCH_DIR, "-I", SRC, *sources, "-o", tmp_path / "sim"])
    lines = _run([tmp_path / "sim"]).stdout.splitlines()
    baud, period, channels, missed, start = (int(x) for x in lines[0].split()[:5])
    ref_volts, full_scale, int16_scale = (float(x) for x in lines[0].split()[5:])
    table = [line.split() for line in lines[1 : 1 + channels]]
    stream = bytes.fromhex(lines[1 + channels])
    assert baud == 115200 and channels == 5

    assert stream[0] == 0 and stream[1] == 0  # the start-up delimiter, then the first frame's
    decoder = FrameDecoder()
    frames = decoder.feed(stream)
    assert decoder.counters.good == len(frames) > 90
    assert decoder.counters.malformed == decoder.counters.crc_failed == decoder.counters.dropped == 0
    assert [f.sequence for f in frames] == list(range(len(frames)))
    assert all(f.encoding == (INT16 if send_int16 else FLOAT32) for f in frames)

    # 64-bit timestamps run on across the 32-bit micros() wrap
    stamps = np.array([f.timestamp_us for f in frames], np.int64)
    assert stamps[0] >= start and stamps[-1] > 2**32 and np.all(np.diff(stamps) > 0)
    # no drift: every sample sits on the grid start + k * period (within the loop latency),
    # except the single late one taken right after the stall; the stall's missed slots are skipped
    offsets = (stamps - stamps[0] + period // 2) % period - period // 2  # signed distance to the grid
    assert np.count_nonzero(np.abs(offsets) > 1000) == 1
    assert missed >= 2
    assert abs(len(frames) - (1_000_000 // period - missed)) <= 2

    # values: the sketch's linear conversion of the fake ADC readings to physical units
    expected = np.array([(int(adc) * ref_volts / full_scale - float(zero)) / float(vpu) for adc, zero, vpu in table])
    tolerance = int16_scale / 2 + 1e-4 if send_int16 else 1e-4
    for frame in frames:
        assert frame.values.shape == (channels,)
        np.testing.assert_allclose(frame.values, expected, rtol=0, atol=tolerance)
    assert 20 < expected[4] < 30  # the TMP36 reading is a room temperature
