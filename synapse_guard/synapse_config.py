"""The guard's configuration as Synapse will see it, read from Synapse's own config paths.

Tools that run outside Synapse (the CLI, an nginx renderer) must enforce the very configuration
Synapse loads, so this reads the files exactly as Synapse 1.x does (`find_config_files` and
`read_config_files` in `synapse/config/_base.py`), without importing Synapse:

- every `-c` path is a file or a directory; a directory contributes its regular files whose
  name ends in `.yaml` (not `.yml`), in sorted order; subdirectories and other files are
  ignored, with a warning, as Synapse prints one;
- each file is read with `yaml.safe_load`; a file that is empty or is not a mapping is
  ignored, with a warning, as in Synapse;
- the files are merged shallowly: a later file replaces a whole top-level key (`modules:`).

Then the one `modules:` entry whose `module` is `synapse_guard.Guard` is parsed with the
guard's own `parse_guard_config`. Every problem raises `SynapseConfigError` with a message
naming the file and the key (`.../90-modules.yaml: modules[0].config.network.allow_cidrs[2]:
...`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import yaml

from synapse_guard.config import GuardConfig, GuardConfigError, parse_guard_config

GUARD_MODULE = "synapse_guard.Guard"
# The same class under its defining module: Synapse imports either spelling.
GUARD_MODULE_NAMES = (GUARD_MODULE, "synapse_guard.module.Guard")

StrPath = str | os.PathLike[str]


class SynapseConfigError(Exception):
    """Synapse's configuration cannot be read or holds no usable guard entry."""


@attrs.frozen(slots=True)
class SynapseConfig:
    """Synapse's merged configuration and, for each top-level key, the file that set it."""

    files: tuple[Path, ...]
    values: Mapping[str, Any]
    origins: Mapping[str, Path]
    warnings: tuple[str, ...] = ()


@attrs.frozen(slots=True)
class GuardEntry:
    """The guard's parsed configuration and where it was found."""

    config: GuardConfig
    files: tuple[Path, ...]
    """Every config file read, in the order Synapse reads them."""
    modules_file: Path
    """The file whose `modules:` list holds the guard (the last one to set `modules:`)."""
    index: int
    """The guard's position in that list."""
    warnings: tuple[str, ...] = ()


def find_config_files(paths: Iterable[StrPath]) -> tuple[list[Path], list[str]]:
    """The files Synapse reads for these `-c` paths, in order, and warnings about skipped ones."""
    files: list[Path] = []
    warnings: list[str] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            files.append(path)
            continue
        try:
            entries = os.listdir(path)
        except OSError as e:
            raise SynapseConfigError(f"{path}: cannot list the directory: {_reason(e)}") from None
        found: list[Path] = []
        for name in entries:
            entry = path / name
            if not entry.is_file():
                warnings.append(f"{entry}: not a regular file, ignored (as Synapse does)")
            elif not name.endswith(".yaml"):
                warnings.append(f"{entry}: does not end in '.yaml', ignored (as Synapse does)")
            else:
                found.append(entry)
        files.extend(sorted(found, key=os.fspath))
    return files, warnings


def read_config(paths: Sequence[StrPath]) -> SynapseConfig:
    """Read and shallowly merge Synapse's config files, as Synapse does at start-up."""
    if not paths:
        raise SynapseConfigError("no config path given: pass Synapse's -c paths")
    files, warnings = find_config_files(paths)
    values: dict[str, Any] = {}
    origins: dict[str, Path] = {}
    for file in files:
        try:
            with open(file, encoding="utf-8") as stream:
                loaded = yaml.safe_load(stream)
        except FileNotFoundError:
            raise SynapseConfigError(f"{file}: no such file or directory") from None
        except OSError as e:
            raise SynapseConfigError(f"{file}: cannot be read: {_reason(e)}") from None
        except UnicodeDecodeError as e:
            raise SynapseConfigError(f"{file}: is not UTF-8 text ({e.reason})") from None
        except yaml.YAMLError as e:
            raise SynapseConfigError(f"{file}: is not valid YAML: {_yaml_reason(e)}") from None
        if not isinstance(loaded, dict):
            warnings.append(f"{file}: empty or not a key-value map, ignored (as Synapse does)")
            continue
        for key, value in loaded.items():
            values[str(key)] = value
            origins[str(key)] = file
    return SynapseConfig(tuple(files), values, origins, tuple(warnings))


def guard_entry(config: SynapseConfig) -> GuardEntry:
    """Find and parse the one `synapse_guard.Guard` entry of a merged configuration."""
    origin = config.origins.get("modules")
    where = f"{origin}: " if origin else ""
    modules = config.values.get("modules") or []  # Synapse treats `modules:` (null) as none
    if not isinstance(modules, list):
        raise SynapseConfigError(f"{where}modules: must be a list, got {_kind(modules)}")
    found: list[int] = []
    for index, entry in enumerate(modules):
        if not isinstance(entry, dict):
            raise SynapseConfigError(f"{where}modules[{index}]: expected a mapping")
        name = entry.get("module")
        if not isinstance(name, str):
            raise SynapseConfigError(f"{where}modules[{index}].module: expected a string")
        if name in GUARD_MODULE_NAMES:
            found.append(index)
    if origin is None or not found:
        read = ", ".join(map(str, config.files)) or "no file"
        set_by = f"; `modules:` is set by {origin}" if origin else "; none of them sets `modules:`"
        raise SynapseConfigError(
            f"no `modules:` entry with `module: {GUARD_MODULE}` in the configuration read "
            f"from {read}{set_by} (Synapse merges files shallowly: the last file that sets "
            "`modules:` replaces every earlier list)"
        )
    if len(found) > 1:
        positions = " and ".join(f"modules[{i}]" for i in found)
        raise SynapseConfigError(
            f"{where}{GUARD_MODULE} is listed more than once ({positions}); "
            "it must be loaded exactly once"
        )
    (index,) = found
    raw = modules[index].get("config") or {}  # Synapse passes {} for a missing or null config
    try:
        guard = parse_guard_config(raw)
    except GuardConfigError as e:
        key = f"modules[{index}].config" + (f".{e.path}" if e.path else "")
        raise SynapseConfigError(f"{origin}: {key}: {e.message}") from None
    return GuardEntry(guard, config.files, origin, index, config.warnings)


def load_guard_entry(paths: Sequence[StrPath]) -> GuardEntry:
    """Read Synapse's config paths (`-c` values) and return the guard's parsed entry."""
    return guard_entry(read_config(paths))


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def _yaml_reason(error: yaml.YAMLError) -> str:
    return " ".join(str(error).split())
