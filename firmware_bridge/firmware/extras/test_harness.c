/*
 * test_harness.c - host-side driver of edgelstm_frame.c for tests/test_firmware.py.
 * Not firmware: it uses stdio and stdlib. Build:
 *
 *     gcc -std=c99 -Wall -Wextra -Wpedantic -Werror -O2 -I../src ../src/edgelstm_frame.c test_harness.c -o harness
 *
 * Reads one command per line from stdin and prints exactly one result line per command
 * (blank lines and lines starting with '#' are skipped and print nothing). Floats travel as
 * their IEEE-754 bit patterns in hex (8 digits), so no decimal parsing or printing can
 * change a value (-0.0, NaN payloads and subnormals survive). Integers are decimal. A
 * capacity of '-' means the full 1024-byte buffer.
 *
 *   F <cap> <flags> <sequence> <timestamp_us> <n> <bits1> ... <bitsn>
 *         elf_encode_float32 -> "<length> <frame hex>"
 *   I <cap> <flags> <sequence> <timestamp_us> <n> <scale bits> <raw1> ... <rawn>
 *         elf_encode_int16   -> "<length> <frame hex>"
 *   C <cap> <input hex, or '-' for empty>
 *         elf_cobs_encode    -> "<length> <encoded hex>"
 *   K <input hex, or '-' for empty>
 *         elf_crc32(0, ...)  -> "<crc as 8 hex digits>"
 *   X <input hex, or '-' for empty>
 *         elf_xor8(0, ...)   -> "<xor as 2 hex digits>"
 *   R <input hex, or '-' for empty>
 *         elf_crc8(0, ...)   -> "<crc as 2 hex digits>"
 *   Q <scale bits> <value bits1> ... <value bitsk>
 *         elf_quantize_int16 of each value -> "<raw1> ... <rawk>"
 *   M     macros -> "<ELF_MAX_FRAME_BYTES> <ELF_FRAME_BYTES_FLOAT32(1..64)...> <ELF_FRAME_BYTES_INT16(1..64)...>"
 *
 * A length of 0 (the function refused) prints "0 -". Bytes past cap are checked to be
 * untouched after every call; if any changed the line is "OVERRUN" instead.
 * A malformed command prints "ERROR <reason>".
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgelstm_frame.h"

#define BUFFER_BYTES 1024u
#define GUARD 0xA5u
#define MAX_VALUES 256u

static uint8_t buffer[BUFFER_BYTES];
static uint8_t input[BUFFER_BYTES];
static char line[65536];

static char *next_token(char **cursor)
{
    char *s = *cursor;
    char *start;
    while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') {
        ++s;
    }
    if (*s == '\0') {
        *cursor = s;
        return NULL;
    }
    start = s;
    while (*s != '\0' && *s != ' ' && *s != '\t' && *s != '\r' && *s != '\n') {
        ++s;
    }
    if (*s != '\0') {
        *s++ = '\0';
    }
    *cursor = s;
    return start;
}

static int parse_u64(const char *tok, int base, unsigned long long max, unsigned long long *out)
{
    char *end;
    unsigned long long v;
    if (tok == NULL || *tok == '\0' || *tok == '-') {
        return 0;
    }
    v = strtoull(tok, &end, base);
    if (*end != '\0' || v > max) {
        return 0;
    }
    *out = v;
    return 1;
}

static int parse_i16(const char *tok, int16_t *out)
{
    char *end;
    long v;
    if (tok == NULL) {
        return 0;
    }
    v = strtol(tok, &end, 10);
    if (*tok == '\0' || *end != '\0' || v < -32768L || v > 32767L) {
        return 0;
    }
    *out = (int16_t)v;
    return 1;
}

static int parse_float_bits(const char *tok, float *out)
{
    unsigned long long bits;
    uint32_t b32;
    if (!parse_u64(tok, 16, 0xFFFFFFFFull, &bits)) {
        return 0;
    }
    b32 = (uint32_t)bits;
    memcpy(out, &b32, sizeof *out);
    return 1;
}

static int parse_capacity(const char *tok, size_t *out)
{
    unsigned long long v;
    if (tok != NULL && strcmp(tok, "-") == 0) {
        *out = BUFFER_BYTES;
        return 1;
    }
    if (!parse_u64(tok, 10, BUFFER_BYTES, &v)) {
        return 0;
    }
    *out = (size_t)v;
    return 1;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* "-" is empty; returns the byte count or -1. */
static long parse_hex_bytes(const char *tok, uint8_t *out, size_t capacity)
{
    size_t n = 0u;
    if (tok == NULL) {
        return -1;
    }
    if (strcmp(tok, "-") == 0) {
        return 0;
    }
    while (tok[0] != '\0') {
        int hi = hex_digit(tok[0]);
        int lo = hi < 0 ? -1 : hex_digit(tok[1]);
        if (lo < 0 || n >= capacity) {
            return -1;
        }
        out[n++] = (uint8_t)(hi * 16 + lo);
        tok += 2;
    }
    return (long)n;
}

static void print_result(size_t length, size_t capacity)
{
    size_t i;
    for (i = capacity; i < BUFFER_BYTES; ++i) {
        if (buffer[i] != GUARD) {
            puts("OVERRUN");
            return;
        }
    }
    if (length == 0u) {
        puts("0 -");
        return;
    }
    printf("%lu ", (unsigned long)length);
    for (i = 0u; i < length; ++i) {
        printf("%02x", (unsigned)buffer[i]);
    }
    putchar('\n');
}

static void frame_command(char kind, char *cursor)
{
    static float values[MAX_VALUES];
    static int16_t raw[MAX_VALUES];
    size_t capacity, length, i;
    unsigned long long flags, sequence, timestamp, n;
    float scale = 0.0f;
    if (!parse_capacity(next_token(&cursor), &capacity) || !parse_u64(next_token(&cursor), 10, 0xFFull, &flags) ||
        !parse_u64(next_token(&cursor), 10, 0xFFFFull, &sequence) ||
        !parse_u64(next_token(&cursor), 10, 0xFFFFFFFFFFFFFFFFull, &timestamp) ||
        !parse_u64(next_token(&cursor), 10, 255ull, &n)) {
        puts("ERROR header");
        return;
    }
    if (kind == 'I' && !parse_float_bits(next_token(&cursor), &scale)) {
        puts("ERROR scale");
        return;
    }
    for (i = 0u; i < (size_t)n; ++i) {
        const char *tok = next_token(&cursor);
        if (kind == 'F' ? !parse_float_bits(tok, &values[i]) : !parse_i16(tok, &raw[i])) {
            puts("ERROR value");
            return;
        }
    }
    if (next_token(&cursor) != NULL) {
        puts("ERROR trailing");
        return;
    }
    memset(buffer, GUARD, sizeof buffer);
    if (kind == 'F') {
        length = elf_encode_float32(buffer, capacity, (uint8_t)flags, (uint16_t)sequence, (uint64_t)timestamp, values, (uint8_t)n);
    } else {
        length = elf_encode_int16(buffer, capacity, (uint8_t)flags, (uint16_t)sequence, (uint64_t)timestamp, raw, (uint8_t)n, scale);
    }
    print_result(length, capacity);
}

static void cobs_command(char *cursor)
{
    size_t capacity;
    long n;
    if (!parse_capacity(next_token(&cursor), &capacity)) {
        puts("ERROR capacity");
        return;
    }
    n = parse_hex_bytes(next_token(&cursor), input, sizeof input);
    if (n < 0) {
        puts("ERROR input");
        return;
    }
    memset(buffer, GUARD, sizeof buffer);
    print_result(elf_cobs_encode(buffer, capacity, input, (size_t)n), capacity);
}

static void csv_checksum_command(char kind, char *cursor)
{
    long n = parse_hex_bytes(next_token(&cursor), input, sizeof input);
    if (n < 0) {
        puts("ERROR input");
        return;
    }
    printf("%02x\n", (unsigned)(kind == 'X' ? elf_xor8(0u, input, (size_t)n) : elf_crc8(0u, input, (size_t)n)));
}

static void crc_command(char *cursor)
{
    long n = parse_hex_bytes(next_token(&cursor), input, sizeof input);
    if (n < 0) {
        puts("ERROR input");
        return;
    }
    printf("%08lx\n", (unsigned long)elf_crc32(0u, input, (size_t)n));
}

static void quantize_command(char *cursor)
{
    float scale, value;
    const char *tok;
    int first = 1;
    if (!parse_float_bits(next_token(&cursor), &scale)) {
        puts("ERROR scale");
        return;
    }
    while ((tok = next_token(&cursor)) != NULL) {
        if (!parse_float_bits(tok, &value)) {
            printf("%sERROR value\n", first ? "" : " ");
            return;
        }
        printf(first ? "%d" : " %d", (int)elf_quantize_int16(value, scale));
        first = 0;
    }
    putchar('\n');
}

static void macros_command(void)
{
    unsigned n;
    printf("%lu", (unsigned long)ELF_MAX_FRAME_BYTES);
    for (n = 1u; n <= ELF_MAX_CHANNELS; ++n) {
        printf(" %lu", (unsigned long)ELF_FRAME_BYTES_FLOAT32(n));
    }
    for (n = 1u; n <= ELF_MAX_CHANNELS; ++n) {
        printf(" %lu", (unsigned long)ELF_FRAME_BYTES_INT16(n));
    }
    putchar('\n');
}

int main(void)
{
    while (fgets(line, sizeof line, stdin) != NULL) {
        char *cursor = line;
        char *command = next_token(&cursor);
        if (command == NULL || command[0] == '#') {
            continue;
        }
        if (strlen(command) != 1u) {
            puts("ERROR command");
        } else if (command[0] == 'F' || command[0] == 'I') {
            frame_command(command[0], cursor);
        } else if (command[0] == 'C') {
            cobs_command(cursor);
        } else if (command[0] == 'K') {
            crc_command(cursor);
        } else if (command[0] == 'X' || command[0] == 'R') {
            csv_checksum_command(command[0], cursor);
        } else if (command[0] == 'Q') {
            quantize_command(cursor);
        } else if (command[0] == 'M') {
            macros_command();
        } else {
            puts("ERROR command");
        }
        fflush(stdout);
    }
    return 0;
}
