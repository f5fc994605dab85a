"""Reference statistics of the input features, stored in the manifest at conversion.

The device's drift monitor (:mod:`edgelstm.runtime.monitor`) compares recent readings with
these: per-feature mean and std, quantile bin edges with the calibration data's share per
bin (for PSI), and the raw range the int8 input grid covers (beyond it the model clips).
Converter side: the runtime only reads the result from the manifest.
"""

from __future__ import annotations

import numpy as np


def reference_statistics(raw: np.ndarray, bins: int, int8_range) -> dict:
    """What the converter stores: per-feature mean, std, quantile bin edges and shares, int8 range."""
    raw = np.asarray(raw, np.float64)
    quantiles = np.quantile(raw, np.linspace(0, 1, bins + 1)[1:-1], axis=0).T  # (features, bins - 1)
    shares = []
    for f in range(raw.shape[1]):
        index = (raw[:, f][:, None] >= quantiles[f][None]).sum(-1)
        shares.append(np.bincount(index, minlength=bins) / len(raw))
    return {
        "mean": raw.mean(0).tolist(),
        "std": raw.std(0).tolist(),
        "bin_edges": quantiles.tolist(),
        "bin_shares": np.asarray(shares).tolist(),
        "int8_range": [list(map(float, int8_range[0])), list(map(float, int8_range[1]))],
        "bins": bins,
    }
