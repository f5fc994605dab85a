"""CSV lines with checksums: NMEA's ``*HH`` (XOR) and CRC-8/SMBUS ``#HH``, checked and counted.

Without a checksum, one flipped bit per line let 3,490 of 20,000 corrupted lines through with
wrong values (issue "Nothing lost without a word"). With one, a damaged line is counted and
skipped; the C side (``elf_xor8``, ``elf_crc8``) computes the same values as the Python side.
"""

from __future__ import annotations

import numpy as np
import pytest

from firmware_bridge.protocol import CsvDecoder, crc8, csv_line, xor_checksum

from .test_firmware import harness, needs_gcc, run_harness  # noqa: F401  (harness: the compiled C test harness)


def test_known_values():
    assert xor_checksum(b"GPGLL,5300.97914,N,00259.98174,E,125926,A") == 0x28  # the NMEA 0183 textbook line
    assert crc8(b"123456789") == 0xF4  # CRC-8/SMBUS check value


@pytest.mark.parametrize("kind", ["xor", "crc8"])
def test_one_flipped_bit_per_line_never_gets_a_wrong_value_through(kind):
    rng = np.random.default_rng(5)
    values = [np.round(rng.normal(size=4) * 100, 3) for _ in range(4000)]
    lines = [csv_line(v, 1000 * i, kind) for i, v in enumerate(values)]
    damaged = []
    for line in lines:
        data = bytearray(line)
        index = int(rng.integers(0, len(data) - 2))  # not the CRLF
        bit = 1 << int(rng.integers(0, 7))  # stay 7-bit ASCII
        if data[index] ^ bit not in (0x0A, 0x0D):
            data[index] ^= bit
        damaged.append(bytes(data))
    decoder = CsvDecoder(4)
    frames = decoder.feed(b"partial\n" + b"".join(damaged))
    c = decoder.counters
    by_time = {f.timestamp_us: f.values for f in frames}
    wrong = [t for t, v in by_time.items() if not np.allclose(v, np.float32(values[t // 1000]))]
    assert not wrong, wrong  # a line that passes is a line as sent (a flip in a hex digit's case keeps its value)
    assert len(frames) < 60  # only those case flips get through
    assert c.checksum_failed + c.garbage + c.wrong_count + len(frames) == len(lines)


def test_a_line_without_a_checksum_after_checksummed_ones_is_not_trusted():
    decoder = CsvDecoder(2)
    frames = decoder.feed(b"x\n" + csv_line([1, 2], 1, "xor") + b"5,3,4\r\n" + csv_line([5, 6], 2, "crc8"))
    assert [f.values.tolist() for f in frames] == [[1.0, 2.0], [5.0, 6.0]] and decoder.counters.checksum_failed == 1


def test_lines_without_checksums_still_work():
    decoder = CsvDecoder(2)
    assert len(decoder.feed(b"x\n1,2,3\n4,5,6\n")) == 2 and decoder.counters.checksum_failed == 0


@needs_gcc
def test_the_c_checksums_match_python(harness):
    rng = np.random.default_rng(8)
    inputs = [b"", b"123456789", b"GPGLL,5300.97914,N,00259.98174,E,125926,A"]
    inputs += [rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8).tobytes() for _ in range(100)]
    out = run_harness(harness, [f"X {d.hex() or '-'}" for d in inputs] + [f"R {d.hex() or '-'}" for d in inputs])
    assert [int(v, 16) for v in out[: len(inputs)]] == [xor_checksum(d) for d in inputs]
    assert [int(v, 16) for v in out[len(inputs):]] == [crc8(d) for d in inputs]


def test_simulate_can_send_checksummed_lines():
    from firmware_bridge.simulator import Simulator

    simulator = Simulator([np.ones((3, 2), np.float32)], rate=0, protocol="csv", csv_checksum="crc8")
    data = b"".join(chunk for chunk, _, _ in simulator.chunks())
    decoder = CsvDecoder(2)
    assert len(decoder.feed(b"\n" + data)) == 3 and b"#" in data and decoder.counters.checksum_failed == 0

