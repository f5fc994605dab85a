"""Bundles: one directory with the step models, ``manifest.json`` and the fidelity report.

The manifest says everything the runtime needs without opening a framework: the input
features and their normalisation, the state tensors (names, shapes, dtypes, quantization),
the outputs, and for each model file its format, quantization, tensor indices and
sha256. Loading checks the schema version and every file's hash and names any mismatch.
JSON only: loading a bundle never executes code.

The manifest is validated against ``manifest.schema.json`` (JSON Schema, with the
``jsonschema`` package) before any field is used, and then for what a schema cannot say
(lengths that must agree, a window that would not fit in memory): an edited or hostile
manifest is refused naming the field, never a ``KeyError`` or a 50 GB allocation. Each model
file's size is checked against the manifest before its hash is computed.

This module imports only the standard library, numpy and jsonschema (the runtime uses it).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from edgelstm.errors import BundleError

SCHEMA = "edgelstm.bundle"
#: The JSON Schema of a manifest, shipped beside this module.
SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")
#: A window of readings the runtime keeps per stream: at most this many float32 values (256 MB).
MAX_WINDOW_VALUES = 1 << 26
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
#: A manifest is a few kB to a few hundred kB; anything far larger is not one (and is not read).
MAX_MANIFEST_BYTES = 16 << 20


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_regular(path: Path, what: str):
    """Open a file of a bundle for reading only if it is a regular file inside it: a symbolic
    link (to /dev/zero, a FIFO, a file elsewhere) or a device is refused, naming it, before a
    byte is read (O_NOFOLLOW, then fstat of what was opened: no race between check and read)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        raise BundleError(f"{what} is listed in the manifest but missing") from None
    except OSError as exc:
        if os.path.islink(path):
            raise BundleError(f"{what}: is a symbolic link; a bundle holds its files itself") from None
        raise BundleError(f"{what}: cannot be opened ({exc.strerror or exc})") from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode) else "a device or socket"
        raise BundleError(f"{what}: is {kind}, not a regular file")
    return os.fdopen(descriptor, "rb")


def _sha256_regular(path: Path, what: str) -> str:
    digest = hashlib.sha256()
    with open_regular(path, what) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path, data) -> None:
    """Write JSON through a temporary file, fsync and rename: never a half-written file."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


_validator = None


def _schema_validator():
    global _validator
    if _validator is None:
        import jsonschema

        _validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    return _validator


def _field(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(the top level)"


def validate_manifest(manifest: dict, where: str) -> None:
    """Refuse a manifest that breaks the schema or whose parts disagree, naming the field."""
    errors = sorted(_schema_validator().iter_errors(manifest), key=lambda e: (len(e.absolute_path), _field(e.absolute_path)))
    if errors:
        first = errors[0]
        message = first.message if len(first.message) <= 200 else first.message[:200] + "..."
        if first.validator in ("pattern", "not") and first.absolute_path and first.absolute_path[-1] in ("file", "default_model"):
            message = f"{str(first.instance)[:200]!r} points outside the bundle (a plain file name inside it is expected)"
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise BundleError(f"{where}: field {_field(first.absolute_path)}: {message}{more}")
    network, given = manifest["network"], manifest["input"]
    n = given["n_features"]
    agree = [("network.n_features", network["n_features"]), ("input.normalization.offset (entries)", len(given["normalization"]["offset"])),
             ("input.normalization.scale (entries)", len(given["normalization"]["scale"]))]
    if given.get("features") is not None:
        agree.append(("input.features (entries)", len(given["features"])))
    for key, values in (given.get("calibration_stats") or {}).items():
        agree.append((f"input.calibration_stats.{key} (entries)", len(values)))
    reference = given.get("reference")
    if reference:
        bins = reference.get("bins")
        for key in ("mean", "std", "bin_edges", "bin_shares"):
            agree.append((f"input.reference.{key} (entries)", len(reference[key])))
        for key, per_feature in (("bin_edges", (bins or 1) - 1), ("bin_shares", bins)):
            for index, values in enumerate(reference[key]):
                if bins is not None and len(values) != per_feature:
                    raise BundleError(f"{where}: field input.reference.{key}[{index}] has {len(values)} entries, "
                                      f"input.reference.bins ({bins}) says {per_feature}")
        if reference.get("int8_range") is not None:
            ranges = reference["int8_range"]
            if len(ranges) != 2 or any(not isinstance(r, list) for r in ranges):
                raise BundleError(f"{where}: field input.reference.int8_range: two lists (low, high) expected")
            agree += [("input.reference.int8_range[0] (entries)", len(ranges[0])), ("input.reference.int8_range[1] (entries)", len(ranges[1]))]
    for name, value in agree:
        if value != n:
            raise BundleError(f"{where}: field {name} is {value}, but input.n_features is {n}")
    window = manifest.get("window") or network.get("window")
    if window and window * n > MAX_WINDOW_VALUES:
        raise BundleError(f"{where}: field window: {window} steps of {n} features is more than the {MAX_WINDOW_VALUES} "
                          "values a stream's window may hold")
    files = [m["file"] for m in manifest["models"]]
    if len(set(files)) != len(files):
        raise BundleError(f"{where}: field models: a file is listed twice ({sorted({f for f in files if files.count(f) > 1})})")
    default = manifest.get("default_model")
    if default is not None and default not in files:
        raise BundleError(f"{where}: field default_model: {default!r} is not one of the models listed")


@dataclass
class Bundle:
    """A loaded, verified bundle."""

    path: Path
    manifest: dict

    @classmethod
    def open(cls, path, verify: bool = True) -> "Bundle":
        path = Path(path)
        manifest_path = path / MANIFEST
        if not path.is_dir():
            raise BundleError(f"{path}: not a bundle directory")
        if not manifest_path.exists():
            raise BundleError(f"{path}: no {MANIFEST}; not an edgelstm bundle")
        try:
            with open_regular(manifest_path, str(manifest_path)) as handle:
                size = os.fstat(handle.fileno()).st_size
                if size > MAX_MANIFEST_BYTES:
                    raise BundleError(f"{manifest_path}: {size} bytes; a manifest is at most {MAX_MANIFEST_BYTES}")
                manifest = json.loads(handle.read().decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{manifest_path}: damaged manifest ({exc})") from None
        except RecursionError:
            raise BundleError(f"{manifest_path}: damaged manifest (nested too deeply to be one)") from None
        if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
            raise BundleError(f"{manifest_path}: not an edgelstm manifest (schema field missing)")
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"{manifest_path}: schema version {version}, this edgelstm reads version {SCHEMA_VERSION}; "
                "convert the model again with this version"
            )
        validate_manifest(manifest, str(manifest_path))
        bundle = cls(path, manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Check every listed file is inside the bundle, exists and has the recorded sha256."""
        for entry in self.manifest["models"] + self.manifest.get("files", []):
            file_path = self.file(entry)
            what = f"{self.path}: {entry['file']}"
            if "bytes" in entry:  # before the hash: a file far larger than listed is not read at all
                with open_regular(file_path, what) as handle:
                    size = os.fstat(handle.fileno()).st_size
                if size != entry["bytes"]:
                    raise BundleError(f"{what}: {size} bytes, the manifest says {entry['bytes']} (field models[].bytes)")
            actual = _sha256_regular(file_path, what)
            if actual != entry["sha256"]:
                raise BundleError(
                    f"{self.path}: {entry['file']} was changed or damaged "
                    f"(sha256 {actual[:12]}..., manifest says {entry['sha256'][:12]}...)"
                )

    @property
    def bundle_id(self) -> str:
        return self.manifest.get("bundle_id", "")

    def models(self, fmt: str | None = None, quant: str | None = None) -> list:
        return [
            m
            for m in self.manifest["models"]
            if (fmt is None or m["format"] == fmt) and (quant is None or m["quant"] == quant)
        ]

    def model(self, fmt: str, quant: str) -> dict:
        found = self.models(fmt, quant)
        if not found:
            have = ", ".join(f"{m['format']}/{m['quant']}" for m in self.manifest["models"])
            raise BundleError(f"{self.path}: no {fmt} {quant} model in this bundle (it has {have})")
        return found[0]

    def file(self, entry: dict) -> Path:
        name = str(entry["file"])
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise BundleError(f"{self.path}: manifest file name {name!r} points outside the bundle")
        return self.path / name

    def add_file(self, source) -> dict:
        """Copy a file into the bundle (e.g. a model compiled by edgetpu_compiler) and list it
        with its sha256 in the manifest, so loading checks it like every other file."""
        import shutil

        source = Path(source)
        target = self.path / source.name
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
        entry = {"file": source.name, "sha256": sha256_of(target)}
        files = [f for f in self.manifest.get("files", []) if f["file"] != source.name] + [entry]
        self.manifest["files"] = files
        write_json_atomic(self.path / MANIFEST, self.manifest)
        return entry
