"""Device profiles (``targets/*.toml``): what the converter produces and the runtime picks.

The profiles live in the repository's ``targets/`` directory and are installed with the
package as ``edgelstm/_targets``. A profile is plain TOML: no code.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from edgelstm.errors import TargetError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FORMATS = ("tflite", "onnx")
QUANTS = ("float32", "float16", "dynamic", "int8", "int16x8")


def targets_dir() -> Path:
    """Where the profiles are: the source tree's ``targets/`` or the installed copy."""
    package = Path(__file__).resolve().parents[1]  # edgelstm/
    for candidate in (package.parent / "targets", package / "_targets"):
        if candidate.is_dir():
            return candidate
    raise TargetError("target profiles not found (neither targets/ nor edgelstm/_targets)")


@dataclass
class Target:
    name: str
    description: str
    arch: str
    formats: list
    quant: list
    batch: int
    edgetpu_check: bool
    backend: str
    model: str
    threads: int
    delegate: str | None

    def to_json(self) -> dict:
        return dict(vars(self))


def list_targets() -> list:
    return sorted(path.stem for path in targets_dir().glob("*.toml"))


def load_target(name_or_path: str) -> Target:
    """Load a profile by name (``rpi4``) or by path to a TOML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = targets_dir() / f"{name_or_path}.toml"
    if not path.exists():
        raise TargetError(f"unknown target '{name_or_path}'; known: {', '.join(list_targets())}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{path}: invalid TOML ({exc})") from None
    convert, runtime = data.get("convert", {}), data.get("runtime", {})
    target = Target(
        name=data.get("name", path.stem),
        description=data.get("description", ""),
        arch=data.get("arch", "any"),
        formats=list(convert.get("formats", ["tflite", "onnx"])),
        quant=list(convert.get("quant", ["int8"])),
        batch=int(convert.get("batch", 1)),
        edgetpu_check=bool(convert.get("edgetpu_check", False)),
        backend=runtime.get("backend", "auto"),
        model=runtime.get("model", "int8"),
        threads=int(runtime.get("threads", 1)),
        delegate=runtime.get("delegate"),
    )
    for value in target.formats:
        if value not in FORMATS:
            raise TargetError(f"{path}: convert.formats has '{value}'; allowed: {', '.join(FORMATS)}")
    for value in target.quant + [target.model]:
        if value not in QUANTS:
            raise TargetError(f"{path}: quantization '{value}' unknown; allowed: {', '.join(QUANTS)}")
    return target
