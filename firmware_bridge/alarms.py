"""Alarm rules: a threshold on one output with hysteresis, emitting alarm and clear events.

``AlarmRule.parse("y0<30:35")``: alarm when output 0 drops below 30, clear when it rises
above 35 again (RUL below 30 cycles). ``"y1>0.8:0.6"``: alarm above 0.8, clear below 0.6.
The gap between the two thresholds keeps a value that hovers around one threshold from
flapping between alarm and clear.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RULE = re.compile(r"^y(\d+)\s*([<>])\s*(-?[\d.eE+-]+)\s*(?::\s*(-?[\d.eE+-]+))?$")


@dataclass
class AlarmRule:
    output: int
    direction: str  # "<" or ">"
    threshold: float
    clear: float
    active: bool = False

    @classmethod
    def parse(cls, text: str) -> "AlarmRule":
        match = _RULE.match(text.strip())
        if not match:
            raise ValueError(f"alarm rule {text!r}: expected yN<THRESHOLD[:CLEAR] or yN>THRESHOLD[:CLEAR]")
        output, direction, threshold, clear = match.groups()
        threshold = float(threshold)
        clear = float(clear) if clear is not None else threshold
        if (direction == "<" and clear < threshold) or (direction == ">" and clear > threshold):
            raise ValueError(f"alarm rule {text!r}: the clear level must be on the safe side of the threshold")
        return cls(int(output), direction, threshold, clear)

    @property
    def name(self) -> str:
        return f"y{self.output}{self.direction}{self.threshold:g}"

    def update(self, outputs) -> str | None:
        """Feed one prediction; returns ``"alarm"``, ``"clear"`` or None."""
        value = float(outputs[self.output])
        if value != value:  # NaN: a rejected reading says nothing
            return None
        if not self.active:
            tripped = value < self.threshold if self.direction == "<" else value > self.threshold
            if tripped:
                self.active = True
                return "alarm"
        else:
            cleared = value > self.clear if self.direction == "<" else value < self.clear
            if cleared:
                self.active = False
                return "clear"
        return None
