/*
 * edgelstm_sensor.ino - samples vibration, current and temperature at a fixed rate and
 * streams them to the Raspberry Pi as edgelstm binary frames (firmware_bridge/protocol.py).
 *
 * Hardware (change the CHANNELS table below for yours):
 *   A0, A1, A2  3-axis analog accelerometer (e.g. ADXL335)           -> vibration, g
 *   A3          hall-effect current sensor (e.g. ACS712-05B)         -> current, A
 *   A4          analog temperature sensor (e.g. TMP36)               -> temperature, degC
 *   (on an Uno/Nano A4 is also I2C SDA: use another pin if you need I2C)
 *
 * Building: this sketch is the example of the EdgeLSTM Arduino library (the folder
 * firmware_bridge/firmware/, laid out as the Arduino library specification 1.5 wants it:
 * library.properties, src/, examples/). Install the library once, then build the example:
 *   Arduino IDE: Sketch > Include Library > Add .ZIP Library... (a zip of the folder), then
 *                File > Examples > EdgeLSTM > edgelstm_sensor
 *   arduino-cli: arduino-cli compile --fqbn arduino:avr:uno --library firmware_bridge/firmware \
 *                    firmware_bridge/firmware/examples/edgelstm_sensor
 *                (or copy the folder to ~/Arduino/libraries/EdgeLSTM once)
 *   PlatformIO:  lib_deps = file://path/to/firmware_bridge/firmware  (platformio.ini)
 * The builder compiles the library's src/ (the encoder, C, with extern "C" guards in the
 * header) and links it with the sketch: one copy of the encoder, used by the tests too.
 *
 * NOT COMPILED FOR A BOARD HERE: the repository has no Arduino toolchain. The tests only
 * compile this sketch with the host g++ against a minimal stub of Arduino.h (a fake clock
 * that starts just before the 32-bit micros() wrap, a fake ADC, a Serial that records the
 * bytes) and decode what it sends with the Python FrameDecoder. It is kept to plain C++11
 * that avr-gcc, arm-none-eabi-gcc and the ESP32 toolchain accept.
 *
 * Receiving on the Pi: the bridge's "frame" protocol at the same baud rate.
 */
#include <Arduino.h>

#include <edgelstm_frame.h>

// ---- configuration ------------------------------------------------------------------

// Serial line rate; the Pi side must use the same.
static const uint32_t SERIAL_BAUD = 115200UL;

// One sample of every channel each SAMPLE_PERIOD_US microseconds (10000 us = 100 Hz).
static const uint32_t SAMPLE_PERIOD_US = 10000UL;

// 1: send int16 values times INT16_SCALE (smaller frames); 0: send float32 values.
#ifndef EDGELSTM_SEND_INT16
#define EDGELSTM_SEND_INT16 0
#endif
// Resolution and range of the int16 encoding: 0.01 units per step, +-327.67 units, finer
// than what a 10-bit ADC resolves on any channel below and wide enough for all of them.
static const float INT16_SCALE = 0.01f;

// ADC: reference voltage and full-scale count (Uno/Nano: 5 V, 10 bit; 3.3 V boards with
// a 12-bit ADC: 3.3f and 4095.0f, and call analogReadResolution(12) in setup()).
static const float ADC_REF_VOLTS = 5.0f;
static const float ADC_FULL_SCALE = 1023.0f;

// Each channel is linear in the voltage at its pin:
//   physical value = (volts - zero_volts) / volts_per_unit
struct AnalogChannel {
    uint8_t pin;
    float zero_volts;     // output at zero g / zero amps / zero degC
    float volts_per_unit; // sensitivity
};

static const AnalogChannel CHANNELS[] = {
    {A0, 1.65f, 0.300f}, // vibration X, g    (ADXL335 at 3.3 V: 1.65 V at 0 g, 300 mV/g)
    {A1, 1.65f, 0.300f}, // vibration Y, g
    {A2, 1.65f, 0.300f}, // vibration Z, g
    {A3, 2.50f, 0.185f}, // current, A        (ACS712-05B: 2.5 V at 0 A, 185 mV/A)
    {A4, 0.50f, 0.010f}, // temperature, degC (TMP36: 0.5 V at 0 degC, 10 mV/degC)
};

static const uint8_t NUM_CHANNELS = (uint8_t)(sizeof(CHANNELS) / sizeof(CHANNELS[0]));

static_assert(sizeof(CHANNELS) / sizeof(CHANNELS[0]) >= 1 &&
                  sizeof(CHANNELS) / sizeof(CHANNELS[0]) <= ELF_MAX_CHANNELS,
              "the frame protocol carries 1..64 channels");

// Big enough for a frame in either encoding (float32 frames are the larger ones); 40 bytes
// for the 5 channels above.
static const size_t FRAME_CAPACITY = ELF_FRAME_BYTES_FLOAT32(sizeof(CHANNELS) / sizeof(CHANNELS[0]));

// The line must carry a frame per period with room to spare, or Serial.write() would block
// and sampling would fall behind: 8N1 sends 10 bits per byte; require <= 90% of the line.
// (5 channels at 100 Hz: 40 bytes * 100 / 11520 bytes/s = 35%.)
static_assert((uint64_t)FRAME_CAPACITY * 10u * 1000000u * 10u <= (uint64_t)SERIAL_BAUD * SAMPLE_PERIOD_US * 9u,
              "frames do not fit the serial line: raise SERIAL_BAUD or SAMPLE_PERIOD_US, or send fewer channels");

// ---- state --------------------------------------------------------------------------

static uint8_t frame_buffer[FRAME_CAPACITY];
static float values[sizeof(CHANNELS) / sizeof(CHANNELS[0])];
#if EDGELSTM_SEND_INT16
static int16_t raw_values[sizeof(CHANNELS) / sizeof(CHANNELS[0])];
#endif
static uint16_t sequence = 0;  // +1 per frame sent, wraps 65535 -> 0 (the Pi expects that)
static uint8_t frame_flags = ELF_FLAG_RESTARTED;  // on the first frame after reset: the Pi counts a restart
static uint64_t next_due_us;   // deadline of the next sample on the 64-bit clock
static uint32_t missed_slots;  // sample slots skipped because the loop fell behind

// ---- 64-bit microsecond clock -------------------------------------------------------

// micros() is 32 bits and wraps every 2^32 us (71.6 minutes). Extend it to 64 bits by
// counting the wraps: a wrap shows as a reading smaller than the previous one. Correct as
// long as this is called at least once per 71 minutes, which loop() does constantly; call
// it only from loop() (not from an interrupt: the two statics are not protected).
static uint64_t micros64()
{
    static uint32_t last_low = 0;
    static uint32_t high = 0;
    const uint32_t now = (uint32_t)micros();
    if (now < last_low) {
        ++high;
    }
    last_low = now;
    return ((uint64_t)high << 32) | now;
}

// ---- sampling -----------------------------------------------------------------------

static void sampleAndSend(uint64_t timestamp_us)
{
    const float volts_per_count = ADC_REF_VOLTS / ADC_FULL_SCALE;
    for (uint8_t i = 0; i < NUM_CHANNELS; ++i) {
        const float volts = (float)analogRead(CHANNELS[i].pin) * volts_per_count;
        values[i] = (volts - CHANNELS[i].zero_volts) / CHANNELS[i].volts_per_unit;
    }

#if EDGELSTM_SEND_INT16
    for (uint8_t i = 0; i < NUM_CHANNELS; ++i) {
        raw_values[i] = elf_quantize_int16(values[i], INT16_SCALE); // rounds and saturates like Python
    }
    const size_t length =
        elf_encode_int16(frame_buffer, sizeof frame_buffer, frame_flags, sequence, timestamp_us, raw_values, NUM_CHANNELS, INT16_SCALE);
#else
    (void)INT16_SCALE;
    const size_t length =
        elf_encode_float32(frame_buffer, sizeof frame_buffer, frame_flags, sequence, timestamp_us, values, NUM_CHANNELS);
#endif

    // length is 0 only if the buffer were too small or NUM_CHANNELS out of range, which
    // the static_asserts above rule out; never send a partial frame.
    if (length > 0) {
        Serial.write(frame_buffer, length); // one complete frame: 0x00 ... 0x00
        ++sequence;                         // uint16_t: wraps 65535 -> 0 by itself
        frame_flags = 0;                    // only the first frame since reset is flagged
    }
}

// ---- Arduino entry points -----------------------------------------------------------

void setup()
{
    Serial.begin(SERIAL_BAUD);
    // Native-USB boards (Leonardo, Zero, RP2040): no `while (!Serial)` here; the sketch
    // streams whether or not a host listens, and the Pi joins at the next frame.

    // One delimiter first: whatever the Pi's receiver holds from before (a bootloader's
    // output, noise while the line was floating, half a frame from before a reset) ends
    // here and is discarded as one bad frame, instead of being glued onto the first frame.
    // (The cast matters: Serial.write(0) is ambiguous with write(const char *).)
    Serial.write((uint8_t)0x00);

    next_due_us = micros64(); // first sample right away
}

void loop()
{
    const uint64_t now = micros64(); // also keeps the wrap counter current
    if (now < next_due_us) {
        return; // not yet (the 64-bit clock never wraps: 584,000 years)
    }

    sampleAndSend(now); // timestamp = when sampling started (jitter = loop latency)

    // No drift: the next deadline is this deadline plus one period, not "now" plus one
    // period, so the time spent sampling and sending, and the loop's latency, do not add
    // up over time: sample k is due at exactly start + k * SAMPLE_PERIOD_US.
    next_due_us += SAMPLE_PERIOD_US;
    if (now >= next_due_us) {
        // More than a whole period late (something blocked): skip the slots that have
        // passed instead of sending a burst of late samples, and stay on the same grid.
        // The Pi sees the gap in the timestamps; the sequence stays gap-free because no
        // frame was lost on the line.
        const uint64_t late = (now - next_due_us) / SAMPLE_PERIOD_US + 1u;
        next_due_us += late * SAMPLE_PERIOD_US;
        missed_slots += (uint32_t)late;
    }
}
