"""Calibration data: sequences of raw feature vectors, from arrays, CSV or C-MAPSS text.

Every loader returns a :class:`CalibrationSet`: a list of sequences ``(steps, features)``
in raw sensor units, with feature names. Loaders name the file (and the line, for text)
of anything wrong; :meth:`CalibrationSet.check` refuses NaN or Inf and a feature count
that does not match the model.

Accepted sources:

- ``.npy``: ``(sequences, steps, features)`` or one sequence ``(steps, features)``.
- ``.npz``: an array ``x`` as above, or else every array is one sequence.
- ``.csv``: a header row; ``features`` names the feature columns (default: every column
  but the group column); ``group`` names a column whose value changes between sequences.
- C-MAPSS text (``train_FD001.txt`` and friends): unit, cycle, 3 settings, 21 sensors per
  row; one sequence per unit; the 14 informative FD001 sensors by default.
- A recipe JSON (``calibration/*.json``) naming one of the above plus its options.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgelstm.errors import CalibrationError

CMAPSS_COLUMNS = ["unit", "cycle", "setting1", "setting2", "setting3"] + [f"s{i}" for i in range(1, 22)]
#: The 14 FD001 sensors that are not constant (s1, s5, s6, s10, s16, s18, s19 are dropped).
CMAPSS_FD001_SENSORS = ["s2", "s3", "s4", "s7", "s8", "s9", "s11", "s12", "s13", "s14", "s15", "s17", "s20", "s21"]


@dataclass
class CalibrationSet:
    sequences: list
    feature_names: list
    source: str
    normalization: str | None = None  # a recipe may name one
    extras: dict = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return self.sequences[0].shape[1]

    @property
    def n_steps(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def check_tokens(self, vocabulary: int) -> "CalibrationSet":
        """Token-id data: whole numbers in ``0..vocabulary-1`` (naming the first one that is not)."""
        self.check(1)
        for index, seq in enumerate(self.sequences):
            bad = (seq != np.round(seq)) | (seq < 0) | (seq >= vocabulary)
            if bad.any():
                step = int(np.argwhere(bad)[0][0])
                raise CalibrationError(
                    f"{self.source}: token id {seq[step, 0]:g} in sequence {index}, step {step} is not in 0..{vocabulary - 1}"
                )
        return self

    def check(self, n_features: int) -> "CalibrationSet":
        """Refuse empty data, a wrong feature count, and NaN or Inf (naming where)."""
        if not self.sequences or self.n_steps == 0:
            raise CalibrationError(f"{self.source}: no calibration data")
        for index, seq in enumerate(self.sequences):
            if seq.ndim != 2 or seq.shape[1] != n_features:
                raise CalibrationError(
                    f"{self.source}: calibration data has {seq.shape[-1]} features per step, "
                    f"the model expects {n_features}"
                )
            bad = ~np.isfinite(seq)
            if bad.any():
                step, feature = np.argwhere(bad)[0]
                raise CalibrationError(
                    f"{self.source}: {seq[step, feature]} in sequence {index}, step {step}, "
                    f"feature '{self.feature_names[feature]}'; calibration data must be finite"
                )
        return self

    def split(self, holdout: float) -> tuple:
        """Deterministic split by sequence: every k-th sequence is held out for the report.

        With a single sequence, its last ``holdout`` share of steps is held out instead.
        """
        if not 0.0 < holdout < 1.0:
            raise CalibrationError(f"holdout must be between 0 and 1, got {holdout}")
        if len(self.sequences) == 1:
            seq = self.sequences[0]
            cut = max(1, int(round(len(seq) * (1.0 - holdout))))
            return self._with([seq[:cut]]), self._with([seq[cut:]])
        every = max(2, min(int(round(1.0 / holdout)), len(self.sequences)))  # at least one held out
        held = [s for i, s in enumerate(self.sequences) if i % every == every - 1]
        kept = [s for i, s in enumerate(self.sequences) if i % every != every - 1]
        return self._with(kept), self._with(held)

    def _with(self, sequences: list) -> "CalibrationSet":
        return CalibrationSet(sequences, self.feature_names, self.source, self.normalization, self.extras)


def load_calibration(path, features=None, group=None, tokens: bool = False) -> CalibrationSet:
    """Load calibration data from any supported source (see module docstring).

    ``tokens``: the model takes token ids (an Embedding first): a 2-D integer array is
    ``(sequences, steps)`` of ids, not one sequence of feature vectors.
    """
    path = Path(path)
    if tokens and path.suffix.lower() in (".npy", ".npz"):
        return _load_tokens(path)
    if not path.exists():
        raise CalibrationError(f"{path}: no such calibration file")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _load_recipe(path)
    if suffix == ".npy":
        return _from_array(_np_load(path), path, features)
    if suffix == ".npz":
        return _load_npz(path, features)
    if suffix == ".csv":
        return _load_csv(path, features, group)
    if suffix == ".txt" and _looks_like_cmapss(path):
        return load_cmapss(path, features)
    raise CalibrationError(
        f"{path}: unknown calibration format; use .npy, .npz, .csv, C-MAPSS .txt or a recipe .json"
    )


def _load_tokens(path: Path) -> CalibrationSet:
    loaded = _np_load(path)
    arrays = [loaded[k] for k in loaded.files] if hasattr(loaded, "files") else [loaded]
    sequences = []
    for array in arrays:
        array = np.asarray(array)
        if array.dtype.kind not in "iu" and not (array.dtype.kind == "f" and np.all(array == np.round(array))):
            raise CalibrationError(f"{path}: token ids must be integers, got {array.dtype}")
        if array.ndim == 1:
            sequences.append(array.reshape(-1, 1).astype(np.float32))
        elif array.ndim == 2:
            sequences += [row.reshape(-1, 1).astype(np.float32) for row in array]
        else:
            raise CalibrationError(f"{path}: token ids of shape {array.shape}; expected (sequences, steps) or (steps,)")
    return CalibrationSet(sequences, ["token"], str(path))


def _np_load(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise CalibrationError(f"{path}: cannot load without pickle ({exc}); store plain numeric arrays") from None
    except (OSError, EOFError) as exc:
        raise CalibrationError(f"{path}: unreadable ({exc})") from None


def _names(features, count: int) -> list:
    if features and len(features) == count:
        return list(features)
    return [f"f{i}" for i in range(count)]


def _from_array(array, path: Path, features) -> CalibrationSet:
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.number):
        raise CalibrationError(f"{path}: array of {array.dtype}, expected numbers")
    if array.ndim == 2:
        sequences = [array.astype(np.float32)]
    elif array.ndim == 3:
        sequences = [s.astype(np.float32) for s in array]
    else:
        raise CalibrationError(f"{path}: array of shape {array.shape}; expected (sequences, steps, features) or (steps, features)")
    return CalibrationSet(sequences, _names(features, array.shape[-1]), str(path))


def _load_npz(path: Path, features) -> CalibrationSet:
    archive = _np_load(path)
    with archive:
        if "x" in archive.files:
            return _from_array(archive["x"], path, features)
        sequences = []
        for key in archive.files:
            array = np.asarray(archive[key])
            if array.ndim == 2:
                sequences.append(array.astype(np.float32))
            elif array.ndim == 3:
                sequences += [s.astype(np.float32) for s in array]
            else:
                raise CalibrationError(f"{path}: array '{key}' has shape {array.shape}; expected 2-D or 3-D")
    if not sequences:
        raise CalibrationError(f"{path}: no arrays")
    return CalibrationSet(sequences, _names(features, sequences[0].shape[-1]), str(path))


def _load_csv(path: Path, features, group) -> CalibrationSet:
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = [name.strip() for name in next(reader)]
        except StopIteration:
            raise CalibrationError(f"{path}: empty CSV file") from None
        if group is not None and group not in header:
            raise CalibrationError(f"{path}: group column '{group}' not in header ({', '.join(header)})")
        wanted = list(features) if features else [name for name in header if name != group]
        missing = [name for name in wanted if name not in header]
        if missing:
            raise CalibrationError(f"{path}: feature column(s) {', '.join(missing)} not in header ({', '.join(header)})")
        columns = [header.index(name) for name in wanted]
        group_column = header.index(group) if group is not None else None
        sequences, current, current_key = [], [], None
        for line_number, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            try:
                values = [float(row[c]) for c in columns]
            except (ValueError, IndexError):
                raise CalibrationError(
                    f"{path}, line {line_number}: expected numbers in columns {', '.join(wanted)}, got {row}"
                ) from None
            key = row[group_column] if group_column is not None else None
            if current and key != current_key:
                sequences.append(np.asarray(current, np.float32))
                current = []
            current_key = key
            current.append(values)
        if current:
            sequences.append(np.asarray(current, np.float32))
    if not sequences:
        raise CalibrationError(f"{path}: no data rows")
    return CalibrationSet(sequences, wanted, str(path))


def _looks_like_cmapss(path: Path) -> bool:
    with open(path) as handle:
        first = handle.readline().split()
    return len(first) == 26


def load_cmapss(path, features=None) -> CalibrationSet:
    """C-MAPSS text: one sequence per unit (engine), rows in cycle order."""
    path = Path(path)
    wanted = list(features) if features else CMAPSS_FD001_SENSORS
    unknown = [name for name in wanted if name not in CMAPSS_COLUMNS]
    if unknown:
        raise CalibrationError(f"{path}: unknown C-MAPSS column(s) {', '.join(unknown)}; columns: {', '.join(CMAPSS_COLUMNS)}")
    rows = []
    with open(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 26:
                raise CalibrationError(f"{path}, line {line_number}: {len(fields)} columns, C-MAPSS rows have 26")
            try:
                rows.append([float(value) for value in fields])
            except ValueError:
                raise CalibrationError(f"{path}, line {line_number}: non-numeric value in {fields}") from None
    table = np.asarray(rows, np.float64)
    columns = [CMAPSS_COLUMNS.index(name) for name in wanted]
    units = table[:, 0].astype(int)
    sequences, unit_ids = [], []
    for unit in dict.fromkeys(units.tolist()):
        block = table[units == unit]
        sequences.append(block[np.argsort(block[:, 1], kind="stable")][:, columns].astype(np.float32))
        unit_ids.append(unit)
    return CalibrationSet(sequences, wanted, str(path), extras={"units": unit_ids})


def _load_recipe(path: Path) -> CalibrationSet:
    try:
        recipe = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{path}: recipe is not valid JSON ({exc})") from None
    if "data" not in recipe:
        raise CalibrationError(f"{path}: recipe needs a 'data' field (a file next to the recipe)")
    data_path = (path.parent / recipe["data"]).resolve()
    loaded = load_calibration(data_path, features=recipe.get("features"), group=recipe.get("group"))
    loaded.normalization = recipe.get("normalization")
    loaded.source = f"{path.name} ({data_path.name})"
    return loaded


#: Below these, calibration ranges and the report's figures rest on too little data to trust:
#: int8 ranges come from a handful of trajectories, and an error measured on a few hundred
#: steps can be off by a factor of two. Conversion goes on, with a warning in the report.
MIN_CALIBRATION_SEQUENCES = 8
MIN_CALIBRATION_STEPS = 1000
MIN_HELD_OUT_SEQUENCES = 4
MIN_HELD_OUT_STEPS = 500


def too_little(calibration: "CalibrationSet", calibration_part: "CalibrationSet", held_out: "CalibrationSet") -> list:
    """Warnings (strings) when the calibration part or the held-out part is too small."""
    warnings = []
    steps = sum(len(s) for s in calibration_part.sequences)
    count = len(calibration_part.sequences)
    if count < MIN_CALIBRATION_SEQUENCES or steps < MIN_CALIBRATION_STEPS:
        why = ""
        if len(calibration.sequences) == 1:
            only = calibration.sequences[0]
            why = (f"; {calibration.source} holds one array of shape {tuple(only.shape)}, read as ONE sequence of "
                   f"{len(only)} steps (a 2-D array is (steps, features)); several sequences are a 3-D "
                   "(sequences, steps, features) array, an .npz of one array per sequence, or a CSV with a group column")
        warnings.append(f"WARNING: calibration is {count} sequence(s), {steps} steps (fewer than "
                        f"{MIN_CALIBRATION_SEQUENCES} sequences or {MIN_CALIBRATION_STEPS} steps): the int8 ranges may "
                        f"not cover what the device will see{why}")
    held_steps = sum(len(s) for s in held_out.sequences)
    if len(held_out.sequences) < MIN_HELD_OUT_SEQUENCES or held_steps < MIN_HELD_OUT_STEPS:
        warnings.append(f"WARNING: the report is measured on {len(held_out.sequences)} held-out sequence(s), "
                        f"{held_steps} steps (fewer than {MIN_HELD_OUT_SEQUENCES} or {MIN_HELD_OUT_STEPS}): its errors "
                        "are rough; give more data or --eval HELDOUT")
    return warnings
