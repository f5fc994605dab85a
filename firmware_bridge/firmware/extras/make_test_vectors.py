"""Writes ``test_vectors.json``: frame-protocol cases shared by the Python bridge and the C encoder.

Run from the repository root::

    python firmware_bridge/firmware/extras/make_test_vectors.py

Every expected frame comes from the Python reference encoder
(:func:`firmware_bridge.protocol.encode_frame`); the C encoder (``src/edgelstm_frame.c``) must
reproduce each byte for byte. The output is deterministic (no randomness, no clock, fixed
key order), so re-running it on an unchanged protocol leaves the file unchanged, and
``tests/test_firmware.py`` checks that the file still matches what ``build_cases()`` and the
current Python encoder produce.

The file is a JSON list; each case has:

``name``, ``why``
    what it covers.
``encoding``
    0 (float32) or 1 (int16).
``flags``, ``sequence``, ``timestamp_us``, ``channels``
    the header fields (``flags`` 1: RESTARTED, the first frame after a device start).
``values``
    the input values as JSON numbers. Every one is exactly a float32 (for int16: the value
    before quantisation), so ``float32(value)`` is lossless.
``values_f32_bits``
    the same values as float32 bit patterns, 8 lowercase hex digits, for consumers that do
    not want to parse decimal floats (the C test harness, a test on the MCU itself).
``scale``, ``scale_f32_bits``, ``raw`` (int16 only)
    the scale (a float32 value) and the int16 values the Python encoder quantises ``values``
    to: ``clip(rint(value / scale), -32768, 32767)``.
``frame_hex``
    the complete wire frame, both 0x00 delimiters included, as lowercase hex.
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]  # the repository (firmware_bridge/firmware/extras/)
OUTPUT = HERE / "test_vectors.json"

if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from firmware_bridge.protocol import FLOAT32, HEADER, INT16, RESTARTED, VERSION, encode_frame  # noqa: E402


def f32(bits: int) -> float:
    """The float32 with these bits, as a Python float (exact)."""
    return float(np.uint32(bits).view(np.float32))


def bits_of(value: float) -> int:
    return int(np.float32(value).view(np.uint32))


def _payload_float32(sequence: int, timestamp_us: int, bits: list, flags: int = 0) -> bytes:
    head = HEADER.pack(VERSION, FLOAT32, flags, sequence, timestamp_us, len(bits))
    return head + b"".join(struct.pack("<I", b) for b in bits)


def _crc_without_zero_bytes(sequence: int, timestamp_us: int, bits: list, slot: int, flags: int = 0) -> list:
    """Adjust the low byte of value ``slot`` (kept non-zero) until the CRC has no 0x00 byte.

    COBS block-boundary cases need a zero-free tail including the CRC; the search is
    deterministic and almost always stops at the first try (each CRC byte is 0 with p=1/256).
    """
    bits = list(bits)
    for low in range(1, 256):
        bits[slot] = (bits[slot] & 0xFFFFFF00) | low
        crc = zlib.crc32(_payload_float32(sequence, timestamp_us, bits, flags))
        if 0 not in struct.pack("<I", crc):
            return bits
    raise AssertionError("no zero-free CRC found")  # pragma: no cover


def _float_case(name: str, why: str, sequence: int, timestamp_us: int, bits: list, flags: int = 0) -> dict:
    values = [f32(b) for b in bits]
    frame = encode_frame(sequence, timestamp_us, np.array(bits, np.uint32).view(np.float32), flags=flags)
    assert [bits_of(v) for v in values] == list(bits)
    return {
        "name": name,
        "why": why,
        "encoding": FLOAT32,
        "flags": flags,
        "sequence": sequence,
        "timestamp_us": timestamp_us,
        "channels": len(bits),
        "values": values,
        "values_f32_bits": [f"{b:08x}" for b in bits],
        "frame_hex": frame.hex(),
    }


def _int16_case(name: str, why: str, sequence: int, timestamp_us: int, values: list, scale: float, flags: int = 0) -> dict:
    scale = float(np.float32(scale))  # the frame carries a float32 scale: keep Python and C dividing by the same
    values = [float(np.float32(v)) for v in values]
    raw = np.clip(np.rint(np.asarray(values, np.float64) / scale), -32768, 32767).astype(np.int16)
    frame = encode_frame(sequence, timestamp_us, values, encoding=INT16, scale=scale, flags=flags)
    return {
        "name": name,
        "why": why,
        "encoding": INT16,
        "flags": flags,
        "sequence": sequence,
        "timestamp_us": timestamp_us,
        "channels": len(values),
        "values": values,
        "values_f32_bits": [f"{bits_of(v):08x}" for v in values],
        "scale": scale,
        "scale_f32_bits": f"{bits_of(scale):08x}",
        "raw": [int(r) for r in raw],
        "frame_hex": frame.hex(),
    }


def build_cases() -> list:
    """All cases, in a fixed order."""
    cases = []

    cases.append(_float_case("float32_1ch", "smallest frame: one channel", 1, 1_000_000, [bits_of(1.0)]))

    # 24 channels of a typical sensor mix (vibration in g, currents in A, temperatures in degC)
    mix = [0.01 * (i - 12) * (1 + (i % 3)) for i in range(18)] + [21.5, 22.25, 35.0, 0.0, -40.0, 125.0]
    cases.append(
        _float_case("float32_24ch", "24 channels of ordinary readings", 4242, 123_456_789, [bits_of(v) for v in mix])
    )

    # 64 channels with plenty of zero bytes inside the payload
    zeros = [bits_of(v) for v in ([0.0, 1.0, 2.0, 0.5, 256.0, -0.0, 1e-45, 65536.0] * 8)]
    cases.append(
        _float_case("float32_64ch_zero_bytes", "max channels; 0x00 bytes all over the payload", 7, 2**20, zeros)
    )

    # 64 channels, the RESTARTED flag and no zero byte after the encoding byte: one run of 272
    # non-zero bytes, crossing COBS's 254-byte block boundary, the longest frame there is
    long_run = _crc_without_zero_bytes(
        0x1111, 0x0102030405060708, [0x3F8CCCCD + 0x01010101 * (i % 7) for i in range(64)], 63, RESTARTED
    )
    cases.append(
        _float_case(
            "float32_64ch_longest",
            "max channels, flags RESTARTED, no zero byte after the encoding byte: a 272-byte non-zero run "
            "(COBS block boundary) and the longest possible frame (ELF_MAX_FRAME_BYTES)",
            0x1111,
            0x0102030405060708,
            long_run,
            RESTARTED,
        )
    )

    # payload: 0x00 at bytes 1 and 2 (encoding, flags), then exactly 254 non-zero bytes
    # (3..256), then 0x00 at 257: a full block followed by a zero (cobs writes FF <254 bytes> 01 ...)
    exact = [0x3F8CCCCD] * 64
    exact[60] = 0x00123456  # byte 14 + 4*60 + 3 = 257 is 0x00; bytes 3..256 are non-zero
    cases.append(
        _float_case(
            "float32_254_run_then_zero",
            "a run of exactly 254 non-zero bytes ended by 0x00",
            0x2222,
            0x1112131415161718,
            exact,
        )
    )

    # payload ending in exactly 254 non-zero bytes (the CRC included): a final full block,
    # which COBS ends without an extra empty block
    tail = [0x3F8CCCCD] * 64
    tail[1] = 0x3F8C00CD  # payload byte 14 + 4 + 1 = 19 is 0x00; 274 - 20 = 254 bytes follow
    tail = _crc_without_zero_bytes(0x3333, 0x2122232425262728, tail, 63)
    cases.append(
        _float_case(
            "float32_254_run_at_end",
            "the payload+CRC ends with exactly 254 non-zero bytes: no trailing empty COBS block",
            0x3333,
            0x2122232425262728,
            tail,
        )
    )

    tail255 = [0x3F8CCCCD] * 64
    tail255[1] = 0x3F8CCC00  # byte 14 + 4 + 0 = 18 is 0x00; 274 - 19 = 255 non-zero bytes follow
    tail255 = _crc_without_zero_bytes(0x4444, 0x3132333435363738, tail255, 63)
    cases.append(
        _float_case(
            "float32_255_run_at_end",
            "the payload+CRC ends with 255 non-zero bytes: a full block and a 1-byte block",
            0x4444,
            0x3132333435363738,
            tail255,
        )
    )

    specials = [
        0x80000000,  # -0.0
        0x00000000,  # +0.0
        0x00000001,  # smallest subnormal
        0x007FFFFF,  # largest subnormal
        0x00800000,  # smallest normal
        0x7F7FFFFF,  # largest finite
        0xFF7FFFFF,  # most negative finite
        bits_of(-1.0),
        bits_of(-123456.78),
        bits_of(3.4e38),
        bits_of(-1e-30),
        bits_of(1e30),
    ]
    cases.append(
        _float_case("float32_specials", "-0.0, subnormals, extremes, negatives", 65535, 2**32 - 1, specials)
    )

    cases.append(_float_case("float32_seq0", "sequence 0 (after the wrap)", 0, 2**32, [bits_of(0.25), bits_of(-0.25)]))
    cases.append(_float_case("float32_restarted", "the first frame after a device start: flags RESTARTED, sequence 0",
                             0, 10_000, [bits_of(21.5), bits_of(0.5)], RESTARTED))
    cases.append(_int16_case("int16_restarted", "int16, the first frame after a device start", 0, 10_000,
                             [1.0, -2.0], 0.001, RESTARTED))
    cases.append(
        _float_case("float32_seq65535", "sequence 65535 (last before the wrap)", 65535, 2**32 + 1, [bits_of(1.5)])
    )
    cases.append(
        _float_case("float32_ts_max", "largest 64-bit timestamp", 12345, 2**64 - 1, [bits_of(9.81), bits_of(-9.81)])
    )
    cases.append(
        _float_case(
            "float32_ts_large", "a large 64-bit timestamp", 54321, 0x0123456789ABCDEF, [bits_of(v) for v in (1, 2, 3)]
        )
    )
    cases.append(_float_case("float32_ts0_all_zero", "timestamp 0, sequence 0, value 0.0", 0, 0, [0x00000000]))

    cases.append(_int16_case("int16_1ch", "int16, one channel", 1, 5_000_000, [1.0], 0.001))
    cases.append(
        _int16_case(
            "int16_24ch",
            "int16, 24 channels of ordinary readings",
            300,
            2**32 - 2,
            [0.013 * (i - 12) * (1 + (i % 3)) for i in range(24)],
            2.0**-10,
        )
    )
    cases.append(
        _int16_case(
            "int16_64ch",
            "int16, max channels, values giving raw 0 (zero bytes) and negatives",
            65535,
            2**40 + 17,
            [((i * 37) % 101 - 50) * 0.25 for i in range(64)],
            0.25,
        )
    )
    cases.append(
        _int16_case(
            "int16_saturation",
            "int16 saturation at both ends: just past the limits, the .5 ties at the limits, huge values",
            0,
            2**32,
            [1e6, -1e6, 32767.0, 32767.5, 32768.0, -32768.0, -32768.5, -32769.0, 3.4e38, -3.4e38],
            1.0,
        )
    )
    cases.append(
        _int16_case(
            "int16_ties_to_even",
            "rint rounds halves to even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0, -1.5 -> -2, -2.5 -> -2",
            2,
            0x0123456789ABCDEF,
            [0.25, 0.75, 1.25, -0.25, -0.75, -1.25, 0.3, -0.3, -0.0, 0.0],
            0.5,
        )
    )
    cases.append(
        _int16_case(
            "int16_tiny_scale",
            "a small scale (0.01, as float32) with the value/scale quotient not exact",
            77,
            86_400_000_000,
            [0.0, 0.01, -0.01, 1.0, 2.5, -327.67, 327.67, 327.68, -327.68, 327.69],
            0.01,
        )
    )
    return cases


def render(cases: list) -> str:
    return json.dumps(cases, indent=1, allow_nan=False) + "\n"


def main() -> None:
    text = render(build_cases())
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {len(json.loads(text))} cases to {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
