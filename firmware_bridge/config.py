"""``edgelstm bridge --config FILE.toml``: everything the command line can say, in one file.

The file is TOML (read with the standard library's ``tomllib``), validated with a JSON Schema
(``jsonschema``) before anything starts: an unknown key, a wrong type or a value out of range
is a :class:`~edgelstm.errors.ConfigError` naming the file, the line and the key. Its values
become the defaults of ``edgelstm bridge``'s options, so a flag on the command line overrides
the file. ``firmware_bridge/gateway.example.toml`` is the shipped, tested example.

``[[devices]]``: one entry per device. Several devices make a gateway: one process, one
runtime with a stream per device (see :mod:`firmware_bridge.bridge`); each device may name
alarm rules of its own. With several devices ``--port`` and ``--device`` on the command line
would be ambiguous and are refused.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgelstm.errors import ConfigError

_DEVICE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port"],
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
        "port": {"type": "string", "minLength": 1},
        "baud": {"type": "integer", "minimum": 50, "maximum": 16_000_000},
        "protocol": {"enum": ["frame", "csv"]},
        "alarms": {"type": "array", "items": {"type": "string", "minLength": 1}},
    },
}
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["bundle", "devices"],
    "properties": {
        "bundle": {"type": "string", "minLength": 1},
        "backend": {"enum": ["auto", "litert", "tflite_runtime", "tensorflow", "onnxruntime", "numpy"]},
        "on_bad_input": {"enum": ["error", "skip", "hold"]},
        "state": {"type": "string", "minLength": 1},
        "reset_on_reconnect": {"type": "boolean"},
        "queue": {"type": "integer", "minimum": 1, "maximum": 10_000_000},
        "gather_ms": {"type": "number", "minimum": 0, "maximum": 1000},
        "watch_bundle": {"type": "number", "minimum": 0, "maximum": 86400},
        "sinks": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "alarms": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "sync_every": {"type": "integer", "minimum": 1},
        "log_readings": {"type": "boolean"},
        "rotate_mb": {"type": "number", "exclusiveMinimum": 0},
        "mqtt_ca": {"type": "string"},
        "mqtt_spool": {"type": "string"},
        "mqtt_queue": {"type": "integer", "minimum": 1},
        "metrics_address": {"type": "string"},
        "healthz_detail": {"enum": ["full", "anonymous", "status"]},
        "devices": {"type": "array", "minItems": 1, "items": _DEVICE},
    },
}
#: config key -> the ``edgelstm bridge`` option (dest) it sets
TOP_LEVEL = {"bundle": "bundle", "backend": "backend", "on_bad_input": "on_bad_input", "state": "state",
             "reset_on_reconnect": "reset_on_reconnect", "queue": "queue", "gather_ms": "gather_ms", "watch_bundle": "watch_bundle", "sinks": "sink", "alarms": "alarm",
             "sync_every": "sync_every", "log_readings": "log_readings", "rotate_mb": "rotate_mb", "mqtt_ca": "mqtt_ca", "mqtt_spool": "mqtt_spool", "mqtt_queue": "mqtt_queue",
             "metrics_address": "metrics_address", "healthz_detail": "healthz_detail"}
DEVICE_KEYS = {"name": "device", "port": "port", "baud": "baud", "protocol": "protocol"}
PATHS = ("bundle", "state", "mqtt_spool")


def _line_of(text: str, path) -> int | None:
    """The line of the last key of ``path`` in the file (its n-th occurrence for list items)."""
    keys = [p for p in path if isinstance(p, str)]
    if not keys:
        return None
    pattern = re.compile(rf"^[ \t]*{re.escape(keys[-1])}[ \t]*=", re.M)
    hits = [text.count("\n", 0, m.start()) + 1 for m in pattern.finditer(text)]
    items = [p for p in path if isinstance(p, int)]
    if hits:
        return hits[min(items[0], len(hits) - 1)] if items and len(hits) > 1 else hits[0]
    return None


def load_config(path) -> dict:
    """The bridge options a config file sets, as ``{dest: value}``; refuses a bad file by name."""
    import tomllib

    import jsonschema

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    errors = sorted(jsonschema.Draft202012Validator(SCHEMA).iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        first = errors[0]
        where = list(first.absolute_path)
        if first.validator == "additionalProperties":  # the unknown key is in the message, not the path
            unknown = re.findall(r"'([^']+)' was unexpected", first.message)
            where = where + unknown[:1]
        key = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in where).replace(".[", "[") or "(the top level)"
        line = _line_of(text, where)
        raise ConfigError(f"{path}{f':{line}' if line else ''}: key {key}: {first.message}")
    devices = data["devices"]
    names = [d.get("name") for d in devices]
    for k, name in enumerate(names):
        if name is not None and names.index(name) != k:
            line = _line_of(text, ["devices", k, "name"])
            raise ConfigError(f"{path}{f':{line}' if line else ''}: key devices[{k}].name: {name!r} is the name of "
                              f"devices[{names.index(name)}] too; each device needs a name of its own")
        if len(devices) > 1 and name is None:
            raise ConfigError(f"{path}: key devices[{k}]: a gateway's devices each need a name (in events, topics and metrics)")
    options = {dest: data[key] for key, dest in TOP_LEVEL.items() if key in data}
    if len(devices) == 1:
        options.update({dest: devices[0][key] for key, dest in DEVICE_KEYS.items() if key in devices[0]})
        if "alarms" in devices[0]:
            options["alarm"] = devices[0]["alarms"]
    else:
        options["devices"] = devices
    for key in PATHS:  # relative paths are relative to the config file
        dest = TOP_LEVEL[key]
        if dest in options:
            options[dest] = (path.parent / options[dest]).resolve() if not Path(options[dest]).is_absolute() else Path(options[dest])
    return options
