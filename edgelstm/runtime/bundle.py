"""Bundles: one directory with the step models, ``manifest.json`` and the fidelity report.

The manifest says everything the runtime needs without opening a framework: the input
features and their normalisation, the state tensors (names, shapes, dtypes, quantization),
the outputs, and for each model file its format, quantization, tensor indices and
sha256. Loading checks the schema version and every file's hash and names any mismatch.
JSON only: loading a bundle never executes code.

This module imports only the standard library and numpy (the runtime uses it).
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
        if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
            raise BundleError(f"{manifest_path}: not an edgelstm manifest (schema field missing)")
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"{manifest_path}: schema version {version}, this edgelstm reads version {SCHEMA_VERSION}; "
                "convert the model again with this version"
            )
        for field in ("input", "outputs", "state", "models"):
            if field not in manifest:
                raise BundleError(f"{manifest_path}: field '{field}' missing")
        bundle = cls(path, manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Check every listed file is inside the bundle, exists and has the recorded sha256."""
        for entry in self.manifest["models"] + self.manifest.get("files", []):
            file_path = self.file(entry)
            actual = _sha256_regular(file_path, f"{self.path}: {entry['file']}")
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
