/*
 * edgelstm_frame.c - MCU-side encoder of the edgelstm "frame" serial protocol, version 2.
 * See edgelstm_frame.h for the wire format and the API.
 *
 * A frame is built in one pass straight into the caller's buffer: every payload byte is
 * fed to the running CRC and to a streaming COBS encoder at the same time, so no second
 * payload buffer (up to 274 bytes, a lot on a 2 KiB AVR) is needed.
 */
#include "edgelstm_frame.h"

#include <string.h>

/* The protocol carries IEEE-754 binary32; refuse to build where float is anything else. */
typedef char elf_float_must_be_32_bits[(sizeof(float) == 4u) ? 1 : -1];

#define ELF_CRC_POLY_REFLECTED UINT32_C(0xEDB88320)

/* One shift/xor step per bit, LSB first (the reflected form of polynomial 0x04C11DB7). */
static uint32_t elf_crc_step(uint32_t reg, uint8_t byte)
{
    uint8_t bit;
    reg ^= (uint32_t)byte;
    for (bit = 0u; bit < 8u; ++bit) {
        if ((reg & UINT32_C(1)) != 0u) {
            reg = (reg >> 1) ^ ELF_CRC_POLY_REFLECTED;
        } else {
            reg >>= 1;
        }
    }
    return reg;
}

uint32_t elf_crc32(uint32_t crc, const uint8_t *data, size_t len)
{
    /* zlib convention: the argument and the result are the final (xorout) value, so the
     * register is inverted on the way in and out; 0 in means the initial 0xFFFFFFFF. */
    uint32_t reg = ~crc;
    size_t i;
    if (data == NULL) {
        return crc;
    }
    for (i = 0u; i < len; ++i) {
        reg = elf_crc_step(reg, data[i]);
    }
    return ~reg;
}

/*
 * Streaming COBS encoder writing into a bounded buffer.
 *
 * COBS splits the input into blocks that end at a zero byte (the zero is dropped) or after
 * 254 non-zero bytes; each block is written as a code byte (number of data bytes + 1)
 * followed by its data bytes. code_pos is the reserved slot of the open block's code byte.
 * After a full 254-byte block no new block is opened until another byte arrives: that way
 * input that ends exactly on a full block gets no trailing empty block, as in the cobs
 * package (and in the canonical COBS encoder). A zero byte always opens a new block, so
 * input ending in 0x00 ends in an empty block (code 0x01).
 */
typedef struct {
    uint8_t *out;
    size_t capacity;
    size_t pos;      /* next free byte of out */
    size_t code_pos; /* slot of the open block's code byte */
    uint8_t code;    /* data bytes in the open block + 1 */
    uint8_t open;    /* a block is open (its code slot is reserved) */
    uint8_t overflow;
    uint32_t crc;    /* CRC register (not inverted) over the payload bytes */
} elf_writer;

static void elf_put_raw(elf_writer *w, uint8_t byte)
{
    /* Capacity is checked against the worst case before a frame starts; this check only
     * guarantees that nothing is ever written past the buffer whatever happens. */
    if (w->pos < w->capacity) {
        w->out[w->pos] = byte;
    } else {
        w->overflow = 1u;
    }
    ++w->pos;
}

static void elf_cobs_begin(elf_writer *w)
{
    w->code_pos = w->pos;
    elf_put_raw(w, 0u); /* reserve the first code byte */
    w->code = 1u;
    w->open = 1u;
}

static void elf_cobs_put(elf_writer *w, uint8_t byte)
{
    if (!w->open) { /* the previous block was a full one: open the next now */
        w->code_pos = w->pos;
        elf_put_raw(w, 0u);
        w->code = 1u;
        w->open = 1u;
    }
    if (byte != 0u) {
        elf_put_raw(w, byte);
        ++w->code;
        if (w->code == 0xFFu) { /* 254 data bytes: close the block */
            if (w->code_pos < w->capacity) {
                w->out[w->code_pos] = w->code;
            }
            w->open = 0u;
        }
    } else { /* the zero ends the block and becomes its code byte */
        if (w->code_pos < w->capacity) {
            w->out[w->code_pos] = w->code;
        }
        w->code_pos = w->pos;
        elf_put_raw(w, 0u);
        w->code = 1u;
    }
}

static void elf_cobs_end(elf_writer *w)
{
    if (w->open && w->code_pos < w->capacity) {
        w->out[w->code_pos] = w->code;
    }
    w->open = 0u;
}

/* A payload byte: into the CRC and through COBS. */
static void elf_put_payload(elf_writer *w, uint8_t byte)
{
    w->crc = elf_crc_step(w->crc, byte);
    elf_cobs_put(w, byte);
}

static void elf_put_u16(elf_writer *w, uint16_t v)
{
    elf_put_payload(w, (uint8_t)(v & 0xFFu));
    elf_put_payload(w, (uint8_t)((v >> 8) & 0xFFu));
}

static void elf_put_u32(elf_writer *w, uint32_t v)
{
    uint8_t i;
    for (i = 0u; i < 4u; ++i) {
        elf_put_payload(w, (uint8_t)((v >> (8u * i)) & 0xFFu));
    }
}

static void elf_put_u64(elf_writer *w, uint64_t v)
{
    uint8_t i;
    for (i = 0u; i < 8u; ++i) {
        elf_put_payload(w, (uint8_t)((v >> (8u * i)) & 0xFFu));
    }
}

static uint32_t elf_float_bits(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return bits;
}

static void elf_frame_begin(elf_writer *w, uint8_t *out, size_t capacity, uint8_t encoding, uint8_t flags,
                            uint16_t sequence, uint64_t timestamp_us, uint8_t channels)
{
    w->out = out;
    w->capacity = capacity;
    w->pos = 0u;
    w->code_pos = 0u;
    w->code = 1u;
    w->open = 0u;
    w->overflow = 0u;
    w->crc = UINT32_C(0xFFFFFFFF);
    elf_put_raw(w, 0x00u); /* leading delimiter: the receiver resynchronises here */
    elf_cobs_begin(w);
    elf_put_payload(w, (uint8_t)ELF_VERSION);
    elf_put_payload(w, encoding);
    elf_put_payload(w, flags);
    elf_put_u16(w, sequence);
    elf_put_u64(w, timestamp_us);
    elf_put_payload(w, channels);
}

static size_t elf_frame_end(elf_writer *w)
{
    uint32_t crc = ~w->crc;
    uint8_t i;
    for (i = 0u; i < 4u; ++i) { /* the CRC goes through COBS but not into itself */
        elf_cobs_put(w, (uint8_t)((crc >> (8u * i)) & 0xFFu));
    }
    elf_cobs_end(w);
    elf_put_raw(w, 0x00u); /* trailing delimiter: the frame is complete */
    return w->overflow ? 0u : w->pos;
}

size_t elf_cobs_encode(uint8_t *out, size_t out_capacity, const uint8_t *in, size_t len)
{
    elf_writer w;
    size_t i;
    if (out == NULL || (in == NULL && len > 0u) || out_capacity < ELF_COBS_MAX_ENCODED(len)) {
        return 0u;
    }
    w.out = out;
    w.capacity = out_capacity;
    w.pos = 0u;
    w.code_pos = 0u;
    w.code = 1u;
    w.open = 0u;
    w.overflow = 0u;
    w.crc = 0u;
    elf_cobs_begin(&w);
    for (i = 0u; i < len; ++i) {
        elf_cobs_put(&w, in[i]);
    }
    elf_cobs_end(&w);
    return w.overflow ? 0u : w.pos;
}

size_t elf_encode_float32(uint8_t *out, size_t out_capacity, uint8_t flags, uint16_t sequence, uint64_t timestamp_us,
                          const float *values, uint8_t channels)
{
    elf_writer w;
    uint8_t i;
    if (out == NULL || values == NULL || channels == 0u || channels > ELF_MAX_CHANNELS ||
        out_capacity < ELF_FRAME_BYTES_FLOAT32(channels)) {
        return 0u;
    }
    elf_frame_begin(&w, out, out_capacity, (uint8_t)ELF_ENCODING_FLOAT32, flags, sequence, timestamp_us, channels);
    for (i = 0u; i < channels; ++i) {
        elf_put_u32(&w, elf_float_bits(values[i]));
    }
    return elf_frame_end(&w);
}

size_t elf_encode_int16(uint8_t *out, size_t out_capacity, uint8_t flags, uint16_t sequence, uint64_t timestamp_us,
                        const int16_t *raw, uint8_t channels, float scale)
{
    elf_writer w;
    uint8_t i;
    if (out == NULL || raw == NULL || channels == 0u || channels > ELF_MAX_CHANNELS ||
        out_capacity < ELF_FRAME_BYTES_INT16(channels)) {
        return 0u;
    }
    elf_frame_begin(&w, out, out_capacity, (uint8_t)ELF_ENCODING_INT16, flags, sequence, timestamp_us, channels);
    elf_put_u32(&w, elf_float_bits(scale));
    for (i = 0u; i < channels; ++i) {
        /* int16 -> uint16 is defined (modulo 2^16): the two's complement bit pattern */
        elf_put_u16(&w, (uint16_t)raw[i]);
    }
    return elf_frame_end(&w);
}

uint8_t elf_xor8(uint8_t value, const uint8_t *data, size_t len)
{
    size_t i;
    for (i = 0u; data != NULL && i < len; ++i) {
        value = (uint8_t)(value ^ data[i]);
    }
    return value;
}

uint8_t elf_crc8(uint8_t crc, const uint8_t *data, size_t len)
{
    size_t i;
    uint8_t bit;
    for (i = 0u; data != NULL && i < len; ++i) {
        crc = (uint8_t)(crc ^ data[i]);
        for (bit = 0u; bit < 8u; ++bit) { /* MSB first, polynomial x^8 + x^2 + x + 1 */
            crc = (uint8_t)((crc & 0x80u) != 0u ? (uint8_t)((uint8_t)(crc << 1) ^ 0x07u) : (uint8_t)(crc << 1));
        }
    }
    return crc;
}

int16_t elf_quantize_int16(float value, float scale)
{
    double q = (double)value / (double)scale;
    int32_t t;
    double frac;
    if (q != q) { /* NaN (also 0/0, inf/inf) */
        return 0;
    }
    if (q >= 32767.0) {
        return (int16_t)32767;
    }
    if (q <= -32768.0) {
        return (int16_t)-32768;
    }
    /* -32768 < q < 32767: truncation toward zero fits int32_t; q - t is exact (|q - t| < 1,
     * same sign), so the tie test below is exact too. */
    t = (int32_t)q;
    frac = q - (double)t;
    if (frac > 0.5 || (frac == 0.5 && (t & 1) != 0)) {
        ++t;
    } else if (frac < -0.5 || (frac == -0.5 && (t & 1) != 0)) {
        --t;
    }
    return (int16_t)t; /* t is now within -32768..32767 */
}
