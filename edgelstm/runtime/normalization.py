"""Feature normalisation stored in the manifest and applied by the runtime.

The model was trained on normalised features; the device sees raw sensor units. The
converter records the mapping (fitted on calibration data, or given as a JSON scaler),
the runtime applies it, and the user never hand-codes it. JSON only, never pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgelstm.errors import CalibrationError

KINDS = ("none", "zscore", "minmax")


@dataclass
class Normalization:
    """``normalised = (raw - offset) / scale`` per feature."""

    kind: str
    offset: np.ndarray
    scale: np.ndarray

    @classmethod
    def identity(cls, n_features: int) -> "Normalization":
        return cls("none", np.zeros(n_features, np.float32), np.ones(n_features, np.float32))

    @classmethod
    def fit(cls, kind: str, data: np.ndarray) -> "Normalization":
        """Fit on ``(samples, features)``; a constant feature gets scale 1 instead of 0."""
        data = np.asarray(data, np.float64)
        if kind == "none":
            return cls.identity(data.shape[1])
        if kind == "zscore":
            offset, scale = data.mean(axis=0), data.std(axis=0)
        elif kind == "minmax":
            offset, scale = data.min(axis=0), data.max(axis=0) - data.min(axis=0)
        else:
            raise CalibrationError(f"unknown normalisation '{kind}'; choose one of {', '.join(KINDS)}")
        scale = np.where(scale > 1e-12, scale, 1.0)
        return cls(kind, offset.astype(np.float32), scale.astype(np.float32))

    def apply(self, raw: np.ndarray) -> np.ndarray:
        return ((np.asarray(raw, np.float32) - self.offset) / self.scale).astype(np.float32)

    def to_json(self) -> dict:
        return {"kind": self.kind, "offset": self.offset.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_json(cls, data: dict, n_features: int, where: str = "normalization") -> "Normalization":
        """Read our manifest form, or a scaler file's ``{"kind", "mean", "std"}`` / ``{"min", "max"}``."""
        kind = data.get("kind", "zscore" if "mean" in data else "minmax" if "min" in data else None)
        if kind not in KINDS:
            raise CalibrationError(f"{where}: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
        if kind == "none":
            return cls.identity(n_features)
        if "offset" in data:
            offset, scale = data["offset"], data["scale"]
        elif kind == "zscore":
            offset, scale = data.get("mean"), data.get("std")
        else:
            lo, hi = data.get("min"), data.get("max")
            offset = lo
            scale = None if lo is None or hi is None else (np.asarray(hi, np.float64) - np.asarray(lo, np.float64))
        if offset is None or scale is None:
            raise CalibrationError(f"{where}: {kind} needs both its vectors (mean/std, min/max or offset/scale)")
        offset, scale = np.asarray(offset, np.float32), np.asarray(scale, np.float32)
        for label, vector in (("offset", offset), ("scale", scale)):
            if vector.shape != (n_features,):
                raise CalibrationError(
                    f"{where}: {label} has {vector.size} values, the model has {n_features} features"
                )
        if np.any(scale == 0) or not np.all(np.isfinite(scale)) or not np.all(np.isfinite(offset)):
            raise CalibrationError(f"{where}: scale has a zero or non-finite value")
        return cls(kind, offset, scale)

    @classmethod
    def from_file(cls, path, n_features: int) -> "Normalization":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CalibrationError(f"{path}: cannot read scaler JSON ({exc})") from None
        return cls.from_json(data, n_features, where=str(path))
