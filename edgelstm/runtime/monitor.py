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
  share of int8 state values at the limits (-128 or 127), sampled at each evaluation;
- **stuck**: a feature that has not changed over the whole window.

Cost on the hot path is one row copy into a preallocated ring buffer per step; the
statistics are computed every ``every`` steps over the whole ring (a few vectorised numpy
calls), so the per-step part allocates nothing and memory is bounded by ``window``.

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

PSI is computed when a rule is about to fire and whenever :meth:`health` is asked, which
keeps the per-step cost down.
"""

from __future__ import annotations

from dataclasses import dataclass

import collections

import numpy as np

MAX_EVENTS = 1000  # events kept until events() is called; older ones are dropped and counted
EPSILON = 1e-4  # floor for bin shares in PSI (an empty bin would make it infinite)


@dataclass
class Thresholds:
    psi: float = 0.25
    shift: float = 2.5  # |window mean - calibration mean| / std that, with PSI above ``psi``, is drift
    shift_clear: float = 2.0
    step: float = 2.0  # |window mean - previous window mean| / std that is a sudden change (a fault)
    step_clear: float = 1.0  # ... cleared when readings are back within this of the level before it
    saturation: float = 0.01
    window: int = 25
    every: int = 10


class DriftMonitor:
    """Windowed input statistics per stream against the manifest's reference."""

    def __init__(self, reference: dict, feature_names: list, streams: int, thresholds: Thresholds | None = None,
                 state_arrays=None):
        self.t = thresholds or Thresholds()
        self.state_arrays = [a for a in (state_arrays or []) if a.dtype == np.int8]  # int8 models only
        self.names = list(feature_names)
        self.streams = streams
        n = len(self.names)
        self.mean = np.asarray(reference["mean"], np.float64)
        self.std = np.where(np.asarray(reference["std"], np.float64) > 0, np.asarray(reference["std"], np.float64), 1.0)
        self.edges = np.asarray(reference["bin_edges"], np.float64)  # (features, bins - 1) interior edges
        self.shares = np.maximum(np.asarray(reference["bin_shares"], np.float64), EPSILON)  # (features, bins)
        self.low = np.asarray(reference["int8_range"][0], np.float64)
        self.high = np.asarray(reference["int8_range"][1], np.float64)
        bins = self.shares.shape[1]
        self._offsets = (np.arange(n) * bins)[None, None, :]
        self._ring = np.zeros((2 * self.t.window, streams, n), np.float32)  # this window and the one before
        self.anchor = np.zeros((streams, n))  # level a drifting feature must come back to
        self.clear_at = np.zeros((streams, n))
        self.step_change = np.zeros((streams, n))
        self._position = 0
        self._seen = 0
        self.psi = np.zeros((streams, n))
        self.mean_shift = np.zeros((streams, n))
        self.saturated = np.zeros((streams, n))
        self.state_saturated = np.zeros(streams)
        self.drifting = np.zeros((streams, n), bool)
        self.stuck = np.zeros((streams, n), bool)
        self.saturating = np.zeros(streams, bool)
        self.events = collections.deque(maxlen=MAX_EVENTS)  # bounded: events() drains it
        self.events_dropped = 0
        self._reset_at = np.zeros(streams, np.int64)  # _seen when each stream was last reset
        self.evaluations = 0
        self._row_cache = {}
        self._weight_cache = {}
        self._any_flag = False
        self._any_outside = False
        self._inverse_window = 1.0 / self.t.window
        self._inverse_std = 1.0 / self.std
        self._zeros = np.zeros((streams, n))
        self._current = self._previous = self._zeros
        self._gather_state = _int8_gatherer(self.state_arrays, streams) if self.state_arrays else None

    def observe(self, readings, rejected=None) -> None:
        """The hot-path part: remember this step's readings (``(streams, features)`` or ``(features,)``).

        ``rejected``: streams whose reading was refused; their row repeats their previous one,
        so a refused reading leaves no trace in the statistics."""
        self._ring[self._position] = readings
        if rejected is not None:  # repeat the stream's last row, and do not count it toward its window
            self._ring[self._position, rejected] = self._ring[self._position - 1, rejected]
            self._reset_at[rejected] += 1
        self._position += 1
        self._seen += 1
        if self._position == 2 * self.t.window:
            self._position = 0
        if self._seen % self.t.every == 0 and self._seen >= self.t.window:
            self.evaluate()

    def _rows(self, age: int = 0) -> np.ndarray:
        """Ring rows of the last ``window`` readings (``age=1``: the ``window`` before those)."""
        key = (self._position, age)
        rows = self._row_cache.get(key)
        if rows is None:
            w = self.t.window
            rows = self._row_cache[key] = (self._position - 1 - np.arange(w) - age * w) % (2 * w)
        return rows

    def _window(self, age: int = 0) -> np.ndarray:
        return self._ring[self._rows(age)]

    def _weights(self) -> np.ndarray:
        """Row weights that turn the ring into (current mean, previous mean) in one matmul."""
        weights = self._weight_cache.get(self._position)
        if weights is None:
            weights = np.zeros((2, 2 * self.t.window))
            weights[0, self._rows(0)] = 1.0 / self.t.window
            weights[1, self._rows(1)] = 1.0 / self.t.window
            weights = self._weight_cache[self._position] = weights.astype(np.float32)
        return weights

    def evaluate(self) -> None:
        """Recompute the statistics over the window and emit events for flags that changed.

        It runs every ``every`` steps on the device, so it is a handful of vectorised calls:
        one matmul gives both window means, one min and one max give stuck sensors and
        input saturation, and the flag bookkeeping is skipped while nothing is near a line."""
        means = (self._weights() @ self._ring.reshape(self._ring.shape[0], -1)).reshape(2, self.streams, -1).astype(np.float64)
        current, previous = means[0], means[1]
        self.mean_shift = (current - self.mean) * self._inverse_std
        self.step_change = (current - previous) * self._inverse_std if self._seen >= 2 * self.t.window else self._zeros
        self._current, self._previous = current, previous
        self.evaluations += 1
        window = self._window()
        low, high = window.min(0), window.max(0)
        stuck = low == high
        outside = bool((low < self.low).any() or (high > self.high).any())
        if outside:
            self.saturated = ((window < self.low) | (window > self.high)).mean(0)
        elif self._any_outside:
            self.saturated = self._zeros
        self._any_outside = outside
        if self._gather_state is not None:
            values = self._gather_state()
            self.state_saturated = ((values == -128) | (values == 127)).mean(-1)
        largest_shift = float(np.abs(self.mean_shift).max())
        if largest_shift > self.t.shift:
            self._compute_psi()
        quiet = (
            not self._any_flag and not outside and largest_shift <= self.t.shift
            and float(np.abs(self.step_change).max()) <= self.t.step and not stuck.any()
            and float(self.state_saturated.max()) <= self.t.saturation
        )
        if not quiet:  # the common case skips the flag bookkeeping entirely
            self._update_flags(stuck)

    def _fresh_mask(self):
        """Streams reset less than a window ago hold another machine's readings: no flags yet."""
        since = self._seen - self._reset_at
        return since >= self.t.window, since >= 2 * self.t.window

    def _compute_psi(self) -> None:
        window = self._window().astype(np.float64)  # (W, streams, features)
        bins = (window[..., None] >= self.edges[None, None]).sum(-1)
        n_features, n_bins = self.shares.shape
        flat = (bins + self._offsets).transpose(1, 0, 2).reshape(self.streams, -1)
        counts = np.stack([np.bincount(row, minlength=n_features * n_bins) for row in flat]).reshape(self.streams, n_features, n_bins)
        observed = np.maximum(counts / window.shape[0], EPSILON)
        self.psi = ((observed - self.shares[None]) * np.log(observed / self.shares[None])).sum(-1)

    def _update_flags(self, stuck) -> None:
        t = self.t
        full, doubly_full = self._fresh_mask()
        jumped = (np.abs(self.step_change) > t.step) & doubly_full[:, None]
        away = (np.abs(self.mean_shift) > t.shift) & (self.psi > t.psi) & full[:, None]
        stuck = stuck & full[:, None]
        onset = (jumped | away) & ~self.drifting
        if onset.any():
            self.anchor = np.where(onset & jumped, self._previous, np.where(onset, self.mean, self.anchor))
            self.clear_at = np.where(onset & jumped, t.step_clear, np.where(onset, t.shift_clear, self.clear_at))
        drifting = onset
        if self.drifting.any():
            drifting = onset | (self.drifting & (np.abs(self._current - self.anchor) / self.std > self.clear_at))
        share = np.where(full, np.maximum(self.saturated.mean(-1), self.state_saturated), 0.0)  # of all values in the window
        saturating = np.where(self.saturating, share > t.saturation / 2, share > t.saturation)
        if (drifting != self.drifting).any() or (stuck != self.stuck).any() or (saturating != self.saturating).any():
            self._emit_changes(drifting, stuck, saturating)
        self.drifting, self.stuck, self.saturating = drifting, stuck, saturating
        self._any_flag = bool(drifting.any() or stuck.any() or saturating.any())

    def _add(self, event: dict) -> None:
        if len(self.events) == self.events.maxlen:
            self.events_dropped += 1  # the oldest goes
        self.events.append(event)

    def _emit_changes(self, drifting, stuck, saturating) -> None:
        for stream in range(self.streams):
            for feature in np.flatnonzero(drifting[stream] != self.drifting[stream]):
                kind = "drift" if drifting[stream, feature] else "drift_clear"
                self._add({"event": kind, "stream": stream, "feature": self.names[feature],
                                    "psi": round(float(self.psi[stream, feature]), 4),
                                    "mean_shift": round(float(self.mean_shift[stream, feature]), 3),
                                    "step_change": round(float(self.step_change[stream, feature]), 3)})
            for feature in np.flatnonzero(stuck[stream] != self.stuck[stream]):
                kind = "stuck" if stuck[stream, feature] else "stuck_clear"
                self._add({"event": kind, "stream": stream, "feature": self.names[feature],
                                    "value": float(self._window()[0, stream, feature])})
            if saturating[stream] != self.saturating[stream]:
                self._add({"event": "saturation" if saturating[stream] else "saturation_clear", "stream": stream,
                                    "input_share": round(float(self.saturated[stream].mean()), 4),
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
            self._position = self._seen = 0
            self._reset_at[:] = 0
        else:
            self._reset_at[stream] = self._seen
        self.drifting[rows] = False
        self.stuck[rows] = False
        self.saturating[rows] = False
        self._any_flag = bool(self.drifting.any() or self.stuck.any() or self.saturating.any())

    def health(self) -> dict:
        """Per stream and feature: PSI, mean shift, saturated share, flags; and an overall status."""
        if self._seen >= self.t.window:
            self._compute_psi()
        streams = []
        for s in range(self.streams):
            features = {
                name: {"psi": round(float(self.psi[s, f]), 4), "mean_shift": round(float(self.mean_shift[s, f]), 3),
                       "step_change": round(float(self.step_change[s, f]), 3),
                       "saturated": round(float(self.saturated[s, f]), 4), "drifting": bool(self.drifting[s, f]),
                       "stuck": bool(self.stuck[s, f])}
                for f, name in enumerate(self.names)
            }
            streams.append({"stream": s, "features": features, "state_saturated": round(float(self.state_saturated[s]), 4),
                            "saturating": bool(self.saturating[s])})
        flagged = self.drifting | self.stuck
        if self._seen < self.t.window:
            status = "warming_up"
        elif self.saturating.any() and (self.state_saturated >= 10 * self.t.saturation).any():
            status = "failing"
        elif (flagged.sum(-1) * 2 > len(self.names)).any():
            status = "failing"
        elif flagged.any() or self.saturating.any():
            status = "degraded"
        else:
            status = "ok"
        return {"status": status, "readings": self._seen, "evaluations": self.evaluations, "events_dropped": self.events_dropped,
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
