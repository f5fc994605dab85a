"""Input drift, int8 saturation and stuck sensors, watched on the device.

An int8 model is calibrated on a range of inputs; a sensor that drifts, a loose connector
or a recalibrated gauge pushes readings out of it, where the model clips and its outputs
stop meaning anything. The converter stores reference statistics of every input feature
(mean, std, quantile bin edges and the calibration data's share per bin, and the range the
int8 input covers, all in raw units). This monitor compares each stream's recent readings
with them:

- **PSI** (population stability index) per feature over the last ``window`` readings
  against the reference bins, and the **standardised mean shift** ``(mean - ref) / std``;
- **saturation**: the share of recent input values outside the int8 input range, and the
  share of int8 state values at the limits (-128 or 127), sampled once per window;
- **stuck**: a feature that has not changed over the whole window.

Flags change with hysteresis and come out as events: ``drift`` / ``drift_clear``,
``saturation`` / ``saturation_clear`` (share above ``saturation``, clear below half of it),
``stuck`` / ``stuck_clear``.

A feature drifts when either

- its window sits far from the calibration data: PSI above ``psi`` (0.25) *and* |mean shift|
  above ``shift`` (2.5 std); it clears below ``shift_clear``. PSI alone cannot decide: the
  reference is a fleet over all life stages while one stream's window is one machine at one
  moment. Measured on the 100 clean C-MAPSS FD001test engines, 50-reading windows: PSI median
  1.2 to 4.2 per feature (maximum 8.3), |mean shift| at most 1.74; or
- its window mean jumped against the previous window by more than ``step`` (2 std): a
  sudden offset, a stuck or swapped sensor. It clears when readings are back within
  ``step_clear`` of the level before the jump. Measured on the clean test engines: such
  window-to-window changes reach at most 1.6 std (slow degradation moves sensors by up
  to 3.4 std over a life, so a baseline fixed at start-up cannot be used).

PSI is computed when a rule is about to fire and whenever :meth:`health` is asked.

Cost
----
The issue's budget is 10 % of ``step()`` (about 2.6 us for the example int8 model here, whose
step has one FC pair per gate), and at this scale Python call overhead dominates (0.1 to 0.6 us per numpy call), so the design
counts calls, not arithmetic:

- **per step**: one row assignment into a preallocated ring of ``2 * window`` rows, done by
  a closure (integer bookkeeping only: no attribute lookup, no numpy scalar, no allocation);
  about 0.2 us;
- **every** ``every`` **readings** (from the first full window on): one matmul of a cached
  weight matrix with the ring gives, for every stream and feature at once, the window sum
  against the reference mean (mean shift), against the previous window's sum (jump), and
  "the last ``window - every + 1`` readings all equal the newest" (stuck pre-check: their
  differences from the newest weighed by ``(k + 1)**2``, exact in float64 for float32
  readings, a small tolerance covers float64 readings; see :meth:`_matrix`). Three
  constant rows of the ring shift each result so that it is within its line when it lies
  between 0 and twice the line, which one integer comparison of the float64 bits decides (a
  negative float read as uint64 is larger than any positive one); one bytes comparison then
  says "nothing near a line". About 1.1 us. Only otherwise does the full look run (exact
  window extremes, PSI when a rule may fire, the flag bookkeeping and events);
- **once per window** (readings 25, 50, ...: the window is then one half of the ring, read
  without a gather): two comparisons of the window with the int8 input range, and the int8
  state count (one gathered read of the state arena, bytes 0x7f and 0x80 counted). About 2 us.
  Input values outside the range are so noticed at the end of the window they fall in (or at
  the next full look, if that comes sooner), no longer at the next evaluation; the int8 state
  is sampled only here (a full look between two window ends uses the last sample);
- **with a flag up** (a stuck sensor, a drifting one) the full look used to run at every
  evaluation; it now runs only when it could change a flag: when the comparison differs from
  the last full look's, when a line is crossed that no flag up explains, when a drifting
  feature's window sum is back within its clear line (bounds on the matmul's result, set at the
  full look) or, once per window, when the sampled saturation shares would move a saturation
  flag. Measured (``bench/device_budget.py``, paired blocks in CPU time, 5 rounds): stuck sensor
  +94 % -> +13 %, drifting +133 % -> +61 %, real readings +35 % -> +24 % (full looks per 1000
  readings: 120 -> 0.1, 114 -> 20, 28 -> 8; drift and stuck events identical; int8 state
  saturation is now sampled once per window whatever else is flagged, as documented above);
- **a comparison that changed** went to the full look too; :meth:`_absorb` now accepts a change
  that cannot move a flag (a drifting feature's line crossed or left, any feature's line left,
  a maybe-stuck run ending, or one starting, whose full look it schedules for when the run
  would span the window, from one column comparison). With the stuck pre-check's weights
  (which no longer pass on an integer-valued sensor whose readings merely average to the
  newest) the full looks per 13,096 FD001 test readings went 103 -> 38 on the engines back
  to back, 233 -> 100 with a drifting sensor; events and ``health()`` identical on ten fault
  scenarios (offsets, stuck, repaired, saturation, NaN readings refused, float64, four
  streams), apart from one input-saturation event noticed at its window's end rather than
  at a full look the pre-check's false alarm had caused. Each full look now costs about
  100 us (it was 145), mostly numpy calls on (streams, features) arrays;
- a feature that has not changed for the last ``window - every + 1`` readings gets one
  evaluation more, exactly when it would have been unchanged for a whole window: a stuck
  sensor is named ``window - 1`` readings after its first frozen reading, wherever that
  falls between two evaluations (before: up to ``window + every - 2``, i.e. 33 readings with
  the defaults, above the issue's 30).

Memory is the ring (``(2 * window + 3) * streams * features`` float64) and weight matrices
cached per ring position (at most ``4 * window``); nothing grows with the readings.

Measured, ``python bench/monitor.py`` (the example C-MAPSS bundle, int8 LiteRT, one stream,
alternating rounds; a 2-vCPU VM shared with other jobs): ``step()`` 6.3 to 7.0 us without
monitoring; with it +6 % to +9 % in 19 of 20 runs (median +7 %), one run +18 % under a burst of
load (before this design: +38 % to +42 %); +8 % in three runs after the repaired-sensor rule. Per call, in CPU time: 1.1 us for the every-10
evaluation, 1.8 us for the once-per-window check, 2.9 us for :meth:`evaluate` (both).
Four streams (the same readings four at a time, paired rounds in CPU time): +9 % (before: +33 %).
Detection with the defaults on the C-MAPSS FD001 test engines (``tests/test_monitor.py``):
no drift or stuck event on the 100 clean engines (and no saturation event; one before); a
3-std offset of s7 named within 28 readings at any of 20 successive onsets on the 70 engines
of 100 readings or more (19 at the onset the first test uses; unchanged from before); a stuck
s12 named after exactly 24 readings at every onset (23 where the reading before the onset
already had the frozen value), against 24 to 33 before.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

MAX_EVENTS = 1000  # events kept until events() is called; older ones are dropped and counted
EPSILON = 1e-4  # floor for bin shares in PSI (an empty bin would make it infinite)
# truthy when any element is: ndarray.any() goes through a Python-level wrapper that costs about
# five times as much on these small arrays, and the full look asks it some thirty times
_any = np.count_nonzero
STUCK_TOLERANCE = 1e-10  # of |reference mean| + std: rounding room of the stuck pre-check for float64 readings


@dataclass
class Thresholds:
    psi: float = 0.25
    shift: float = 2.5  # |window mean - calibration mean| / std that, with PSI above ``psi``, is drift
    shift_clear: float = 2.0
    step: float = 2.0  # |window mean - previous window mean| / std that is a sudden change (a fault)
    step_clear: float = 1.0  # ... cleared when readings are back within this of the level before it
    saturation: float = 0.01
    window: int = 25
    every: int = 10  # readings between two evaluations of the means (the input range and int8 state: once per window)


class DriftMonitor:
    """Windowed input statistics per stream against the manifest's reference."""

    def __init__(self, reference: dict, feature_names: list, streams: int, thresholds: Thresholds | None = None,
                 state_arrays=None):
        self.t = thresholds or Thresholds()
        if self.t.window < 2 or self.t.every < 1:
            raise ValueError("the monitor needs window >= 2 and every >= 1")
        self.state_arrays = [a for a in (state_arrays or []) if a.dtype == np.int8]  # int8 models only
        self.names = list(feature_names)
        self.streams = streams
        n = len(self.names)
        w = self.t.window
        self.mean = np.asarray(reference["mean"], np.float64)
        self.std = np.where(np.asarray(reference["std"], np.float64) > 0, np.asarray(reference["std"], np.float64), 1.0)
        self.edges = np.asarray(reference["bin_edges"], np.float64)  # (features, bins - 1) interior edges
        self.shares = np.maximum(np.asarray(reference["bin_shares"], np.float64), EPSILON)  # (features, bins)
        self.low = np.asarray(reference["int8_range"][0], np.float64)
        self.high = np.asarray(reference["int8_range"][1], np.float64)
        bins = self.shares.shape[1]
        self._offsets = (np.arange(streams * n) * bins).reshape(streams, n)  # each (stream, feature)'s first bin number
        # The ring: this window and the one before (2 * window rows); then three constant rows that
        # the matmul adds to its three results (see _matrix), so that each result is within its
        # line exactly when it lies between 0 and twice the line.
        self._length = length = 2 * w
        tile = lambda values: np.tile(values, streams)  # noqa: E731  per feature -> flat (streams * features)
        interval = min(self.t.every, w)  # at most this many readings between two evaluations
        self._run = max(2, w - interval + 1)  # a feature unchanged this long may be stuck before the next one
        self._shift_line = tile(w * self.t.shift * self.std)  # on window sums
        self._step_line = tile(w * self.t.step * self.std)
        tolerance = tile(STUCK_TOLERANCE * (np.abs(self.mean) + self.std))
        self._buffer = np.zeros((length + 3, streams * n))
        self._buffer[length] = self._shift_line - w * tile(self.mean)
        self._buffer[length + 1] = self._step_line
        self._buffer[length + 2] = tolerance
        self._ring = self._buffer[:length].reshape(length, streams, n)
        self._result = np.zeros((3, streams * n))
        self._result[0], self._result[1], self._result[2] = self._shift_line, self._step_line, tolerance  # "all at 0"
        self._within = np.empty(self._result.shape, bool)
        # A float64 between 0 and x (x > 0) is, read as a uint64, at most x read as a uint64 (a
        # negative one has its sign bit set): one integer comparison tests both sides of a line.
        self._lines = np.stack([2 * self._shift_line, 2 * self._step_line, 2 * tolerance]).view(np.uint64)
        self._quiet = np.concatenate([np.ones(2 * streams * n, bool), np.zeros(streams * n, bool)]).tobytes()
        self._scale = tile(1.0 / (w * self.std))  # window sum -> mean in std units
        # Once per window: every reading of the window against the int8 input range (full-size
        # bounds: comparing against a broadcast row costs three times as much here).
        self._below = np.repeat(tile(self.low)[None], w, axis=0)
        self._above = np.repeat(tile(self.high)[None], w, axis=0)
        self._flags = np.empty((2 * w, streams * n), bool)
        self._flags_below, self._flags_above = self._flags[:w], self._flags[w:]
        self._none = bytes(self._flags.size)
        self._row_cache = {}
        self.anchor = np.zeros((streams, n))  # level a drifting feature must come back to
        # the level the last cleared drift came back to: the window's return there (a repaired
        # sensor) is itself a jump, which must not start a new drift anchored at the faulty level
        self.cleared_anchor = np.full((streams, n), np.nan)
        self.clear_at = np.zeros((streams, n))
        self.psi = np.zeros((streams, n))
        self.saturated = np.zeros((streams, n))
        self._no_share = np.zeros(streams)
        self._input_share = self._no_share  # the mean of ``saturated`` over features, per stream
        self.state_saturated = np.zeros(streams)
        self.drifting = np.zeros((streams, n), bool)
        self.stuck = np.zeros((streams, n), bool)
        self.saturating = np.zeros(streams, bool)
        self.events = collections.deque(maxlen=MAX_EVENTS)  # bounded: events() drains it
        self.events_dropped = 0
        self._reset_at = np.zeros(streams, np.int64)  # _seen when each stream was last reset
        self._all_fresh_from = None  # the reading from which every stream has two full windows (None: to compute)
        self._everywhere = np.ones(streams, bool)
        # the ring row of each stream's last repeated (refused or idle) reading: a window holding
        # repeats is not that sensor's own readings, so it cannot say "stuck"
        self._repeat_seen = np.full(streams, -(2**40), np.int64)
        self._any_flag = False
        self._any_outside = False
        self._state_high = False
        self._calm = True  # no flag up, input and state saturation below the line (see _settle)
        self._examined = None  # the comparison a full look (or _absorb) last accepted (see _note_examined)
        self._explained = False
        self._scheduled = np.zeros(streams * n, bool)  # maybe-stuck runs whose full look is scheduled
        self._psi_fresh = False  # PSI computed by this full look (events carry the current window's)
        self._bounds_stale = True  # the drifting features' clear bounds need computing (see _note_examined)
        self._drift_rows = np.zeros(0, np.int64)
        self._zeros = np.zeros((streams, n))
        self._current = self._previous = self._zeros
        self._gather_state = _int8_gatherer(self.state_arrays, streams) if self.state_arrays else None
        self._install_observer()

    # ------------------------------------------------------------------ hot path
    def _install_observer(self) -> None:
        """``self.observe`` and the evaluation schedule, as closures over their arrays.

        A step costs one row assignment and two integer operations (no attribute lookup, no
        numpy scalar). An evaluation where nothing is near a line costs a matmul, an integer
        comparison and a bytes comparison; once per window come two comparisons of the window
        with the int8 input range and the int8 state count."""
        t = self.t
        w, every, length = t.window, t.every, self._length
        rows = list(self._buffer[:length]) if self.streams == 1 else list(self._ring)  # row views
        buffer, result, within, lines = self._buffer, self._result, self._within, self._lines
        as_integers = result.view(np.uint64)
        quiet_pattern, none = self._quiet, self._none
        halves = (self._buffer[:w], self._buffer[w:length])  # the window when position is w, when it is 0
        below, above, flags = self._below, self._above, self._flags
        flags_below, flags_above = self._flags_below, self._flags_above
        less_equal, less, greater = np.less_equal, np.less, np.greater
        dots = ([None] * length, [None] * length)  # matrix.dot, per [both windows][position]
        both_dots = dots[True]
        position = base = evaluations = 0
        extra = -1  # an evaluation between the regular ones (a sensor about to count as stuck)

        def means(position: int, both: bool) -> bool:
            """The matmul and the comparison; True when nothing is near a line."""
            into = dots[both][position]
            if into is None:
                into = dots[both][position] = self._matrix(position, both).dot
            into(buffer, result)
            return less_equal(as_integers, lines, within).tobytes() == quiet_pattern

        def ranges(position: int) -> None:
            """The window against the int8 input range, and the int8 state."""
            window = halves[position == 0] if position % w == 0 else self._window(0, position).reshape(w, -1)
            less(window, below, flags_below)
            greater(window, above, flags_above)
            outside = flags.tobytes() != none
            if outside or self._any_outside:
                self._note_outside(window, outside)
            self._sample_state()
            self._settle()

        def evaluate(position: int, seen: int, regular: bool = True, full: bool = True, forced: bool = False) -> None:
            """``regular``: the means (every ``every`` readings); ``full``: input range and state
            (once per window); ``forced``: a maybe-stuck run may now span the window. Anything
            near a line, or a flag up, goes to :meth:`_examine` unless :meth:`_accepts` says the
            full look would change no flag."""
            nonlocal evaluations
            evaluations += 1
            both = seen >= length
            quiet = means(position, both) if regular else True
            if full:
                ranges(position)
            if quiet and self._calm:
                if regular:  # nothing near a line: what a later comparison is measured against
                    self._examined, self._explained = quiet_pattern, True
                return
            if not regular:
                means(position, both)
            pattern = within.tobytes()
            if forced and pattern != quiet_pattern:
                self._examine(position, seen)
            elif not ((self._any_flag or self._calm) and self._accepts(pattern, position, seen)
                      and self._saturation_holds()):
                self._examine(position, seen)

        # After the first two windows, with ``every`` dividing the ring, what is due repeats with the
        # ring: (regular, once per window, readings until the next) per position.
        steady = None
        if length % every == 0:
            steady = [(p % every == 0, p % w == 0, min(every - p % every, w - p % w)) for p in range(length)]

        def due(position: int) -> int:
            """Run what is due after ``position`` rows; return the readings until the next check."""
            nonlocal evaluations
            seen = base + position
            if steady is not None and base and extra < seen:
                regular, full, until = steady[position]
                if regular and not full:  # the common case, inline
                    evaluations += 1
                    into = both_dots[position]
                    if into is None:
                        into = both_dots[position] = self._matrix(position, True).dot
                    into(buffer, result)
                    pattern = less_equal(as_integers, lines, within).tobytes()
                    if pattern == quiet_pattern and self._calm:
                        self._examined, self._explained = quiet_pattern, True
                    elif not ((self._any_flag or self._calm) and self._accepts(pattern, position, seen)):
                        self._examine(position, seen)
                elif regular or full:
                    evaluate(position, seen, regular, full)
                return until if extra <= seen else min(until, extra - seen)
            if seen >= w:
                regular = seen % every == 0 or seen == extra
                full = seen % w == 0
                if regular or full:
                    evaluate(position, seen, regular, full, seen == extra)
            until = min(every - seen % every, w - seen % w)
            return min(until, extra - seen) if extra > seen else until

        next_due = due(0)

        def observe(readings, rejected=None) -> None:
            """Remember this step's readings (``(streams, features)`` or ``(features,)``).

            ``rejected``: streams whose reading was refused; their row repeats their previous one,
            so a refused reading leaves no trace in the statistics."""
            nonlocal position, base, next_due
            if rejected is not None:
                readings = self._repeat_rejected(readings, rejected, position)
            rows[position][...] = readings
            position += 1
            if position == next_due:  # every ``every`` readings, at each window's end, at the ring's end
                if position == length:
                    position = 0
                    base += length
                next_due = position + due(position)

        def where() -> tuple:
            return position, base + position

        def count() -> int:
            return evaluations

        def look_again(at: int) -> None:
            nonlocal extra
            extra = at

        def pending() -> int:
            return extra

        def restart() -> None:
            nonlocal position, base, next_due, extra
            position = base = 0
            extra = -1
            next_due = due(0)

        def evaluate_now() -> None:
            """Evaluate now: everything the schedule runs (means, input range, int8 state)."""
            position, seen = where()
            evaluate(position, seen)

        self.observe = observe
        self._where, self._count, self._look_again, self._restart = where, count, look_again, restart
        self._pending = pending  # the reading number of the next extra evaluation (-1: none)
        self.evaluate = evaluate_now
        self._evaluate = evaluate  # (position, seen, regular, full): for tests and benchmarks

    @property
    def evaluations(self) -> int:
        """Evaluations run so far."""
        return self._count()

    def _repeat_rejected(self, readings, rejected, position):
        """A copy of the readings where each rejected stream repeats its previous row."""
        readings = np.array(readings, np.float64).reshape(self.streams, -1)
        readings[rejected] = self._ring[(position - 1) % self._length, rejected]
        self._reset_at[rejected] += 1  # do not count toward the stream's window
        self._all_fresh_from = None
        self._repeat_seen[np.asarray(rejected, bool).reshape(-1)] = self._where()[1]
        return readings

    @property
    def _seen(self) -> int:
        """Readings observed since the monitor started or was reset."""
        return self._where()[1]

    @property
    def _position(self) -> int:
        """The ring row the next reading goes to."""
        return self._where()[0]

    # ------------------------------------------------------------------ evaluation
    def _matrix(self, position: int, both: bool) -> np.ndarray:
        """Row weights over the ring and its constant rows, for the three checks at ``position``:

        0. window sum - window * reference mean (+ the shift line);
        1. window sum - previous window's sum (``both``; + the step line);
        2. sum over the last ``_run`` readings of ``(k + 1)**2 * (reading k back - the newest)``
           (+ a tolerance): the tolerance when they are all equal (float64 sums of float32 values
           times small integers are exact; the rounding of float64 readings and of the added
           tolerance is far smaller than it), so "within" is "maybe stuck", which
           :meth:`_examine` then checks exactly. Unequal weights: with equal ones an
           integer-valued sensor whose last 16 readings merely *average* to the newest (s17 of
           C-MAPSS, 391-395) passed 60 times in the FD001 test engines' evaluations and sent each
           to the full look; with squares, none did."""
        w, length = self.t.window, self._length
        matrix = np.zeros((3, length + 3))
        current, previous = self._rows(0, position), self._rows(1, position)
        matrix[0, current] = 1.0
        if both:
            matrix[1, current] = 1.0
            matrix[1, previous] = -1.0
        weights = (np.arange(self._run) + 1.0) ** 2
        matrix[2, current[:self._run]] = weights
        matrix[2, current[0]] -= weights.sum()
        matrix[0, length] = matrix[1, length + 1] = matrix[2, length + 2] = 1.0
        return matrix

    def _rows(self, age: int = 0, position: int | None = None) -> np.ndarray:
        """Ring rows of the last ``window`` readings, newest first (``age=1``: the ``window`` before those)."""
        if position is None:
            position = self._position
        key = (position, age)
        rows = self._row_cache.get(key)
        if rows is None:
            w = self.t.window
            rows = self._row_cache[key] = (position - 1 - np.arange(w) - age * w) % self._length
        return rows

    def _window(self, age: int = 0, position: int | None = None) -> np.ndarray:
        return self._ring[self._rows(age, position)]

    def _note_outside(self, window, outside: bool) -> None:
        """The share of each feature's window values outside the int8 input range."""
        if outside:
            values = window.reshape(self.t.window, self.streams, -1)
            outside_values = (values < self.low) | (values > self.high)
            self.saturated = np.add.reduce(outside_values, axis=0, dtype=np.float64) / self.t.window  # the mean
            self._input_share = np.add.reduce(self.saturated, axis=-1) / len(self.names)  # per stream
        else:
            self.saturated, self._input_share = self._zeros, self._no_share
        self._any_outside = outside

    def _settle(self) -> None:
        """Calm: no flag up and no saturation share above its line, so that an evaluation whose
        means are quiet needs no full look (a few readings outside the int8 range, below the
        line, are counted again at the next window's check)."""
        saturation = self._state_high or (self._any_outside and float(self._input_share.max()) > self.t.saturation)
        self._calm = not (self._any_flag or saturation)

    def _sample_state(self) -> None:
        """The share of int8 state values at -128 or 127, per stream (bytes 0x80 and 0x7f)."""
        if self._gather_state is None:
            return
        raw = self._gather_state().tobytes()  # (streams, values), C order
        size = len(raw) // self.streams
        if self.streams == 1:
            share = (raw.count(b"\x7f") + raw.count(b"\x80")) / size
            self.state_saturated[0] = share
        else:
            self.state_saturated = np.array([(raw.count(b"\x7f", s * size, (s + 1) * size)
                                              + raw.count(b"\x80", s * size, (s + 1) * size)) / size
                                             for s in range(self.streams)])
            share = float(self.state_saturated.max())
        self._state_high = share > self.t.saturation

    @property
    def mean_shift(self) -> np.ndarray:
        """``(window mean - reference mean) / std`` per stream and feature, at the last evaluation."""
        return ((self._result[0] - self._shift_line) * self._scale).reshape(self.streams, -1)

    @property
    def step_change(self) -> np.ndarray:
        """``(window mean - previous window mean) / std`` at the last evaluation (0 until two windows)."""
        return ((self._result[1] - self._step_line) * self._scale).reshape(self.streams, -1)

    def _accepts(self, pattern: bytes, position: int, seen: int) -> bool:
        """True when the full look now would change no flag a regular evaluation decides, so it
        is skipped (a stuck sensor or a drifting one kept every evaluation on the full look:
        +108 % and +152 % of ``step()``; an integer-valued sensor's repeated readings, each a
        maybe-stuck run, kept sending calm evaluations there).

        That is when the comparison is the one the last full look accepted, or differs from it
        only in ways :meth:`_absorb` can account for; every line crossed then belongs to a flag
        already up (a shift or step line: a drifting feature; the stuck pre-check: a stuck one)
        or to a maybe-stuck run whose full look is scheduled for when it would span the whole
        window; and no drifting feature's window sum has come back within its clear line."""
        if pattern != self._examined and not self._absorb(position, seen):
            return False
        if not self._explained:
            return False
        rows = self._drift_rows
        if rows.size:
            sums = self._result[0][rows]
            if _any((sums >= self._clear_low) & (sums <= self._clear_high)):
                return False
        return True

    def _absorb(self, position: int, seen: int) -> bool:
        """The comparison differs from the accepted one: True, and it becomes the accepted one,
        when no difference can move a flag without a full look:

        - a shift or step line newly crossed by a drifting feature (its drift goes on, or ends
          through the clear bounds), or no longer crossed by any feature (a drift starts only
          where a line is crossed);
        - the stuck pre-check newly failing for a feature not flagged stuck (it stays unstuck);
        - the stuck pre-check newly passing for a feature not flagged stuck: its run of equal
          readings is measured (one column comparison) and the full look scheduled for when the
          run would span the window, as the full look itself schedules it.

        A steady feature newly crossing a line, a stuck feature that moved and a run that
        already spans the window go to the full look."""
        if self._examined is None:
            return False
        within = self._within
        changed = within != np.frombuffer(self._examined, bool).reshape(within.shape)
        drifting, stuck = self.drifting.reshape(-1), self.stuck.reshape(-1)
        if _any(changed[:2] & ~within[:2] & ~drifting) or _any(changed[2] & stuck):
            return False
        starting = changed[2] & within[2]
        if _any(starting):
            w = self.t.window
            columns = self._window(0, position).reshape(w, -1)[:, starting]
            same = columns == columns[0]
            if _any(same.all(0)):
                return False
            run = same.argmin(0)
            if int(run.min()) < self._run:  # the pre-check's rounding room: let the full look decide
                return False
            at, extra = seen + w - int(run.max()), self._pending()
            self._look_again(min(at, extra) if extra > seen else at)
            self._scheduled |= starting
        self._examined = within.tobytes()
        self._explained = self._explains(within, seen)
        return True

    def _explains(self, within, seen: int) -> bool:
        """Every line crossed in ``within`` belongs to a flag up, or to a maybe-stuck run whose
        full look is scheduled (an extra evaluation is pending, no later than the run's end)."""
        drifting, stuck = self.drifting.reshape(-1), self.stuck.reshape(-1)
        if _any(~(within[0] & within[1]) & ~drifting):
            return False
        runs = within[2] & ~stuck
        return not _any(runs) or (self._pending() > seen and not _any(runs & ~self._scheduled))

    def _note_examined(self, seen: int) -> None:
        """What :meth:`_accepts` needs from this full look: the comparison it saw, whether the
        flags up and the scheduled runs explain every line crossed, and (when the drifting
        features or their anchors changed) each drifting feature's clear line as bounds on the
        shifted window sum (``_result[0]``), widened by a rounding margin (a sum that close to
        the line gets the full look)."""
        within = self._within
        self._examined = within.tobytes()
        self._explained = self._explains(within, seen)
        if not self._bounds_stale:
            return
        self._bounds_stale = False
        drifting = self.drifting
        rows = self._drift_rows = np.flatnonzero(drifting)
        if rows.size:
            w = self.t.window
            shape = drifting.shape
            anchor, clear = self.anchor.reshape(-1)[rows], self.clear_at.reshape(-1)[rows]
            std = np.broadcast_to(self.std, shape).reshape(-1)[rows]
            mean = np.broadcast_to(self.mean, shape).reshape(-1)[rows]
            shift = self._shift_line[rows]
            low = w * (anchor - clear * std - mean) + shift
            high = w * (anchor + clear * std - mean) + shift
            margin = 1e-9 * (np.abs(low) + np.abs(high) + w * std)
            self._clear_low, self._clear_high = low - margin, high + margin

    def _saturation_holds(self) -> bool:
        """The saturation flags as the full look would set them from the shares just sampled."""
        if not (self._any_outside or self._state_high or _any(self.saturating)):
            return True  # nothing outside the int8 range, no state share above the line, none flagged
        full, _ = self._fresh_mask()
        share = np.where(full, np.maximum(self._input_share, self.state_saturated), 0.0)
        saturating = np.where(self.saturating, share > self.t.saturation / 2, share > self.t.saturation)
        return not _any(saturating != self.saturating)

    def _examine(self, position: int, seen: int) -> None:
        """The full look, when something is near a line: exact window statistics and the flags."""
        w = self.t.window
        mean_shift, step_change = self.mean_shift, self.step_change
        self._current = self.mean + mean_shift * self.std
        self._previous = self._current - step_change * self.std
        window = self._window(0, position)
        low, high = window.min(0), window.max(0)
        stuck = low == high
        outside = bool(_any(low < self.low) or _any(high > self.high))
        if outside or self._any_outside:
            self._note_outside(window, outside)
        # (the int8 state's saturation: as sampled at the last window's end)
        away = np.abs(mean_shift) > self.t.shift
        self._psi_fresh = bool(_any(away))
        if self._psi_fresh:
            self._compute_psi(window)
        fresh = self._fresh_mask()
        self._update_flags(stuck, mean_shift, step_change, away, fresh)
        self._settle()
        # a feature unchanged for the last _run readings but not yet for a whole window: look again
        # exactly when it would be (the regular evaluations may be up to ``every`` readings apart)
        flaggable = stuck & fresh[0][:, None]  # after a reset a stale constant window flags nothing yet
        candidates = self._within[2].reshape(self.streams, -1) & ~flaggable
        if _any(candidates):
            same = window == window[0]
            run = int(np.where(same.all(0), w, same.argmin(0))[candidates].max())
            self._look_again(seen + w - run if run >= self._run else -1)
        else:
            self._look_again(-1)
        self._scheduled = candidates.reshape(-1)
        self._note_examined(seen)

    def _fresh_mask(self):
        """Streams reset less than a window ago hold another machine's readings: no flags yet
        (jumps: less than two windows ago). Per stream: (a window since, two windows since)."""
        seen = self._seen
        if self._all_fresh_from is None:
            self._all_fresh_from = int(self._reset_at.max()) + 2 * self.t.window
        if seen >= self._all_fresh_from:  # the usual case: nothing reset lately
            return self._everywhere, self._everywhere
        since = seen - self._reset_at
        return since >= self.t.window, since >= 2 * self.t.window

    def _compute_psi(self, window=None) -> None:
        """PSI of every stream and feature over its window: one bin count for all of them (each
        (stream, feature) pair has its own run of bin numbers)."""
        window = self._window() if window is None else window  # (W, streams, features), float64
        bins = (window[..., None] >= self.edges).sum(-1)
        n_features, n_bins = self.shares.shape
        counts = np.bincount((bins + self._offsets).reshape(-1), minlength=self.streams * n_features * n_bins)
        observed = np.maximum(counts.reshape(self.streams, n_features, n_bins) / window.shape[0], EPSILON)
        self.psi = ((observed - self.shares) * np.log(observed / self.shares)).sum(-1)

    def _update_flags(self, stuck, mean_shift, step_change, away, fresh) -> None:
        """The flags from this full look's statistics (``away``: |mean shift| above its line;
        ``fresh``: :meth:`_fresh_mask`); changes become events."""
        t = self.t
        full, doubly_full = fresh
        everywhere = full is self._everywhere
        jumped = np.abs(step_change) > t.step
        if not everywhere:
            jumped &= doubly_full[:, None]
        if _any(jumped):  # a jump back towards the level the last cleared drift returned to is a repair
            with np.errstate(invalid="ignore"):  # NaN (no drift cleared yet) compares False
                jumped &= ~(np.abs(self._current - self.cleared_anchor) < np.abs(self._previous - self.cleared_anchor))
        away = away & (self.psi > t.psi)
        if not everywhere:
            away &= full[:, None]
            stuck = stuck & full[:, None]
        # a stream whose window holds repeats (readings refused, or a gateway's idle device) keeps
        # its stuck flag as it was: a device that stopped sending is not a stuck sensor
        seen = self._seen
        own = (seen - 1 - self._repeat_seen) >= t.window
        if not own.all():
            stuck = np.where(own[:, None], stuck, self.stuck)
        onset = (jumped | away) & ~self.drifting
        if _any(onset):
            self.anchor = np.where(onset & jumped, self._previous, np.where(onset, self.mean, self.anchor))
            self.clear_at = np.where(onset & jumped, t.step_clear, np.where(onset, t.shift_clear, self.clear_at))
        drifting = onset
        if _any(self.drifting):
            drifting = onset | (self.drifting & (np.abs(self._current - self.anchor) / self.std > self.clear_at))
        cleared = self.drifting & ~drifting
        if _any(cleared):
            self.cleared_anchor = np.where(cleared, self.anchor, self.cleared_anchor)
        # of all values in the window (no input value outside the int8 range: the state's share)
        share = np.maximum(self._input_share, self.state_saturated) if self._any_outside else self.state_saturated
        if not everywhere:
            share = np.where(full, share, 0.0)
        saturating = (share > t.saturation) | (self.saturating & (share > t.saturation / 2))  # with hysteresis
        idle = self._repeat_seen == seen - 1  # nothing new from these streams: their flags stay
        if _any(idle):
            drifting = np.where(idle[:, None], self.drifting, drifting)
            saturating = np.where(idle, self.saturating, saturating)
        moved = _any(drifting != self.drifting)
        if moved or _any(onset):
            self._bounds_stale = True
        if moved or _any(stuck != self.stuck) or _any(saturating != self.saturating):
            self._emit_changes(drifting, stuck, saturating)
        self.drifting, self.stuck, self.saturating = drifting, stuck, saturating
        self._any_flag = bool(_any(drifting) or _any(stuck) or _any(saturating))

    def _add(self, event: dict) -> None:
        if len(self.events) == self.events.maxlen:
            self.events_dropped += 1  # the oldest goes
        self.events.append(event)

    def _emit_changes(self, drifting, stuck, saturating) -> None:
        mean_shift, step_change, newest = self.mean_shift, self.step_change, self._window()[0]
        if not self._psi_fresh and _any(drifting != self.drifting):
            self._compute_psi()  # the events carry this window's PSI, not an older one
        for stream in range(self.streams):
            for feature in np.flatnonzero(drifting[stream] != self.drifting[stream]):
                kind = "drift" if drifting[stream, feature] else "drift_clear"
                self._add({"event": kind, "stream": stream, "feature": self.names[feature],
                           "psi": round(float(self.psi[stream, feature]), 4),
                           "mean_shift": round(float(mean_shift[stream, feature]), 3),
                           "step_change": round(float(step_change[stream, feature]), 3)})
            for feature in np.flatnonzero(stuck[stream] != self.stuck[stream]):
                kind = "stuck" if stuck[stream, feature] else "stuck_clear"
                self._add({"event": kind, "stream": stream, "feature": self.names[feature],
                           "value": float(newest[stream, feature])})
            if saturating[stream] != self.saturating[stream]:
                self._add({"event": "saturation" if saturating[stream] else "saturation_clear", "stream": stream,
                           "input_share": round(float(self._input_share[stream]), 4),
                           "state_share": round(float(self.state_saturated[stream]), 4)})

    def drain(self) -> list:
        events = list(self.events)
        self.events.clear()
        return events

    def reset(self, stream: int | None = None) -> None:
        """Forget the flags of one stream (it waits a full window before new ones), or of all
        streams and the window too."""
        rows = slice(None) if stream is None else stream
        if stream is None:
            self._restart()
            self._reset_at[:] = 0
            self._all_fresh_from = None
        else:
            self._reset_at[stream] = self._seen
            self._all_fresh_from = None
        self.drifting[rows] = False
        self.stuck[rows] = False
        self.saturating[rows] = False
        self.cleared_anchor[rows] = np.nan
        self._examined = None
        self._bounds_stale = True
        self._any_flag = bool(_any(self.drifting) or _any(self.stuck) or _any(self.saturating))
        self._settle()

    def health(self) -> dict:
        """Per stream and feature: PSI, mean shift, saturated share, flags; and an overall status."""
        seen = self._seen
        if seen >= self.t.window:
            self._compute_psi()
        mean_shift, step_change = self.mean_shift, self.step_change
        streams = []
        for s in range(self.streams):
            features = {
                name: {"psi": round(float(self.psi[s, f]), 4), "mean_shift": round(float(mean_shift[s, f]), 3),
                       "step_change": round(float(step_change[s, f]), 3),
                       "saturated": round(float(self.saturated[s, f]), 4), "drifting": bool(self.drifting[s, f]),
                       "stuck": bool(self.stuck[s, f])}
                for f, name in enumerate(self.names)
            }
            streams.append({"stream": s, "features": features, "state_saturated": round(float(self.state_saturated[s]), 4),
                            "saturating": bool(self.saturating[s])})
        flagged = self.drifting | self.stuck
        if seen < self.t.window:
            status = "warming_up"
        elif self.saturating.any() and (self.state_saturated >= 10 * self.t.saturation).any():
            status = "failing"
        elif (flagged.sum(-1) * 2 > len(self.names)).any():
            status = "failing"
        elif flagged.any() or self.saturating.any():
            status = "degraded"
        else:
            status = "ok"
        return {"status": status, "readings": seen, "evaluations": self.evaluations, "events_dropped": self.events_dropped,
                "thresholds": dict(vars(self.t)),
                "streams": streams}


def _int8_gatherer(arrays: list, streams: int):
    """One call that returns every int8 state value as ``(streams, total)`` (see
    :func:`~edgelstm.runtime.steppers.arena_view`), instead of a numpy call per tensor."""
    from .steppers import arena_view

    found = arena_view(arrays, np.int8)
    if found is None:
        return lambda: np.concatenate([a.reshape(streams, -1) for a in arrays], axis=1)
    arena, offsets = found
    index = np.concatenate([o.reshape(streams, -1) for o in offsets], axis=1)

    def gather():
        return arena[index]

    gather.keep_alive = arrays
    return gather
