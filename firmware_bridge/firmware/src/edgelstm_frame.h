/*
 * edgelstm_frame.h - MCU-side encoder of the edgelstm "frame" serial protocol, version 2.
 *
 * The receiving side is firmware_bridge/protocol.py (FrameDecoder); this file must stay
 * byte-for-byte compatible with its encode_frame(). firmware_bridge/firmware/extras/test_vectors.json
 * holds cases both sides are tested against (tests/test_firmware.py).
 *
 * Wire format of one frame:
 *
 *     0x00 || COBS(payload || crc32(payload)) || 0x00
 *
 * payload, every multi-byte field little-endian:
 *
 *     offset  size  field
 *     0       1     version        2
 *     1       1     encoding       0 = float32 values, 1 = int16 values times one float32 scale
 *     2       1     flags          bit 0 ELF_FLAG_RESTARTED: set on the first frame after the
 *                                  device started (or restarted), 0 on every other frame
 *     3       2     sequence       0 on that first frame, +1 per frame, wraps 65535 -> 0
 *                                  (the receiver counts gaps)
 *     5       8     timestamp_us   device clock in microseconds since start, never decreasing
 *                                  while the device runs (extend micros() to 64 bits)
 *     13      1     channels       N, 1..64
 *     14      4     scale          float32, only when encoding == 1
 *     ...     N*4   values         float32 (encoding 0), or
 *             N*2                  int16   (encoding 1); physical value = raw * scale
 *
 * Why a restart flag and a clock that only goes forward: the receiver must tell a device that
 * restarted (its sequence starts again at 0) from frames repeated or lost. Version 1 guessed
 * from the sequence alone, and lost the new run's frames when a device restarted soon after a
 * previous start, or counted thousands of phantom losses. With the flag, a restart is said;
 * if the flagged frame itself is lost, the clock going backwards still says it.
 *
 * crc32 is CRC-32/ISO-HDLC, the one zlib/PNG/Ethernet use (reflected polynomial 0xEDB88320,
 * init 0xFFFFFFFF, xorout 0xFFFFFFFF), appended little-endian: it catches the bit errors
 * and dropped bytes a UART link produces, which COBS alone would not notice.
 *
 * COBS (Consistent Overhead Byte Stuffing) rewrites the bytes so that 0x00 never occurs
 * inside a frame, at a cost of one byte per 254 plus one. 0x00 therefore only ever marks a
 * frame boundary. Each frame carries a delimiter at BOTH ends: the trailing one ends the
 * frame so the receiver can decode it at once; the leading one means that a receiver that
 * started listening mid-stream, or that saw line noise, a reset message from a bootloader
 * or lost bytes since the previous frame, throws that junk away at the 0x00 and
 * resynchronises instead of gluing it to the front of this frame (which would cost this
 * frame too). Between two back-to-back frames the receiver sees an empty run, which it
 * ignores, so the extra byte costs nothing but bandwidth.
 *
 * Portability: C99, no malloc, no stdio, only <stdint.h>, <stddef.h> and <string.h>. Bytes
 * are serialised with shifts, so the CPU's endianness does not matter; floats are copied
 * bit-for-bit into a uint32_t with memcpy (IEEE-754 binary32 is assumed, as on AVR, ARM
 * Cortex-M, ESP32, RP2040 and x86). Works with 16-bit int (AVR). No global state: every
 * function is reentrant.
 */
#ifndef EDGELSTM_FRAME_H
#define EDGELSTM_FRAME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ELF_VERSION 2u
#define ELF_FLAG_RESTARTED 0x01u
#define ELF_ENCODING_FLOAT32 0u
#define ELF_ENCODING_INT16 1u
#define ELF_MAX_CHANNELS 64u

/* version, encoding, flags, sequence, timestamp_us, channels */
#define ELF_HEADER_BYTES 14u
#define ELF_CRC_BYTES 4u

/* Payload + CRC (the bytes before COBS) of a frame with n channels. */
#define ELF_RAW_BYTES_FLOAT32(n) (ELF_HEADER_BYTES + 4u * (size_t)(n) + ELF_CRC_BYTES)
#define ELF_RAW_BYTES_INT16(n) (ELF_HEADER_BYTES + 4u + 2u * (size_t)(n) + ELF_CRC_BYTES)

/*
 * Largest COBS encoding of n input bytes, whatever they are: one code byte in front, plus
 * one more for every full 254-byte block of non-zero bytes that is followed by more data
 * (a zero byte is replaced by a code byte, costing nothing). That is n + ceil(n / 254) for
 * n >= 1, and 1 for n == 0. The bound is reached by data without zero bytes.
 */
#define ELF_COBS_MAX_ENCODED(n) ((size_t)(n) == 0u ? (size_t)1u : (size_t)(n) + ((size_t)(n) + 253u) / 254u)

/* Largest complete wire frame (both 0x00 delimiters included) with n channels. */
#define ELF_FRAME_BYTES_FLOAT32(n) (ELF_COBS_MAX_ENCODED(ELF_RAW_BYTES_FLOAT32(n)) + 2u)
#define ELF_FRAME_BYTES_INT16(n) (ELF_COBS_MAX_ENCODED(ELF_RAW_BYTES_INT16(n)) + 2u)

/*
 * Largest frame of the protocol: 64 float32 channels. 274 raw bytes, COBS adds 2 (one code
 * byte plus one for the 254-byte block boundary), plus 2 delimiters = 278 bytes. Tight: a
 * frame whose values, sequence, timestamp and CRC contain no zero byte is exactly this long
 * (tests/test_firmware.py checks that against Python's encode_frame). A buffer of this size
 * holds any frame; size it with ELF_FRAME_BYTES_FLOAT32(n) if you always send n channels.
 */
#define ELF_MAX_FRAME_BYTES ELF_FRAME_BYTES_FLOAT32(ELF_MAX_CHANNELS)

/*
 * CRC-32/ISO-HDLC of len bytes, continuing from a previous result exactly like zlib's
 * crc32(crc, buf, len) and Python's zlib.crc32(data, crc): start with crc = 0;
 * elf_crc32(elf_crc32(0, a, na), b, nb) == elf_crc32(0, a || b, na + nb).
 * Bitwise, without a lookup table: 8 shift/xor steps per byte and no 1 KiB table in flash.
 * Rough cost (estimated, not measured): on a 16 MHz 8-bit AVR, 32-bit shifts make it
 * about 100-150 cycles per byte, so ~0.3 ms for a 5-channel float32 frame and ~2 ms for
 * the largest one; on a 32-bit MCU a few cycles per bit.
 */
uint32_t elf_crc32(uint32_t crc, const uint8_t *data, size_t len);

/*
 * COBS-encodes len bytes from in into out (delimiters NOT included; the frame encoders add
 * them). Identical output to Python's cobs.cobs.encode: a final block of exactly 254
 * non-zero bytes gets no extra trailing code byte. Returns the encoded length (always >= 1),
 * or 0 if out_capacity < ELF_COBS_MAX_ENCODED(len) or in/out is NULL with len > 0.
 * in and out must not overlap.
 */
size_t elf_cobs_encode(uint8_t *out, size_t out_capacity, const uint8_t *in, size_t len);

/*
 * Writes one complete wire frame (leading 0x00, COBS(payload || crc), trailing 0x00) of
 * channels float32 values into out and returns its length, ready for Serial.write(out, n).
 * flags is ELF_FLAG_RESTARTED on the first frame after the device started, else 0.
 * Returns 0, writing nothing useful, if channels is 0 or > 64, out or values is NULL, or
 * out_capacity < ELF_FRAME_BYTES_FLOAT32(channels).
 *
 * Why capacity is checked against the worst case rather than against the length this
 * particular frame happens to need: the COBS length depends on the data, so a buffer that
 * is one byte short would fail only for rare values, in the field. Checking the worst case
 * makes a short buffer fail on the very first frame, while you develop.
 *
 * NaN, infinities, -0.0 and subnormals are sent bit-for-bit.
 */
size_t elf_encode_float32(uint8_t *out, size_t out_capacity, uint8_t flags, uint16_t sequence, uint64_t timestamp_us,
                          const float *values, uint8_t channels);

/*
 * Same for int16 values: physical value = raw[i] * scale (the receiver multiplies in
 * float32). Halves the size of the values compared with float32, e.g. 64 channels take 153
 * bytes instead of 278. Use elf_quantize_int16() to get raw from physical values. Returns
 * 0 if channels is 0 or > 64, out or raw is NULL, or out_capacity <
 * ELF_FRAME_BYTES_INT16(channels).
 */
size_t elf_encode_int16(uint8_t *out, size_t out_capacity, uint8_t flags, uint16_t sequence, uint64_t timestamp_us,
                        const int16_t *raw, uint8_t channels, float scale);

/*
 * Checksums for the csv protocol (Edge Impulse-style lines "t,v1,v2,...\r\n"): append
 * "*HH" with elf_xor8() of the bytes before the '*' (NMEA 0183's checksum, two hex digits),
 * or "#HH" with elf_crc8() (CRC-8/SMBUS: polynomial 0x07, init 0, no reflection, xorout 0),
 * which also catches two flipped bits in the same bit position. The bridge checks either and
 * counts failures. Both continue from a previous result: start with 0.
 */
uint8_t elf_xor8(uint8_t value, const uint8_t *data, size_t len);
uint8_t elf_crc8(uint8_t crc, const uint8_t *data, size_t len);

/*
 * value / scale rounded to the nearest integer, ties to even, saturated to -32768..32767:
 * the same as the Python encoder's clip(rint(float64(value) / scale), -32768, 32767).
 * +-infinity and division by a zero scale saturate; NaN gives 0 (Python leaves that case
 * undefined). The division is done in double: bit-identical to Python wherever double is
 * 64-bit (ARM, ESP32, x86) and scale is a float32 value. avr-gcc's double is 32-bit by
 * default, so there a quotient within about 2^-9 of a .5 tie may round the other way
 * (an error of at most 1 raw step, never more).
 */
int16_t elf_quantize_int16(float value, float scale);

#ifdef __cplusplus
}
#endif

#endif /* EDGELSTM_FRAME_H */
