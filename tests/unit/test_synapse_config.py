"""Reading the guard's entry from Synapse's config paths, as Synapse itself reads them."""

from __future__ import annotations

import ipaddress
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from synapse.config._base import find_config_files as synapse_find_config_files
from synapse.config._base import read_config_files as synapse_read_config_files

from synapse_guard.config import GuardConfig, NetworkPolicy, RegistrationPolicy
from synapse_guard.synapse_config import (
    SynapseConfigError,
    find_config_files,
    load_guard_entry,
    read_config,
)


def guard(config: Any = None, module: str = "synapse_guard.Guard") -> dict[str, Any]:
    entry: dict[str, Any] = {"module": module}
    if config is not None:
        entry["config"] = config
    return entry


def network(*allow: str) -> dict[str, Any]:
    return {"network": {"allow_cidrs": list(allow)}}


def write(path: Path, content: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def allow_cidrs(*cidrs: str) -> NetworkPolicy:
    return NetworkPolicy(allow_cidrs=tuple(ipaddress.ip_network(c) for c in cidrs))


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """homeserver.yaml (no modules) next to an empty homeserver.d/."""
    write(tmp_path / "homeserver.yaml", {"server_name": "guard.test", "report_stats": False})
    (tmp_path / "homeserver.d").mkdir()
    return tmp_path


def paths(conf: Path) -> list[str]:
    return [str(conf / "homeserver.yaml"), str(conf / "homeserver.d")]


# Which files, in which order -------------------------------------------------------------


def test_a_directory_gives_its_yaml_files_in_sorted_order_after_earlier_paths(conf: Path) -> None:
    d = conf / "homeserver.d"
    for name in ("90-modules.yaml", "10-listeners.yaml", "2-late.yaml", ".hidden.yaml"):
        write(d / name, {"x": name})
    files, warnings = find_config_files(paths(conf))
    # Plain string order, as Synapse sorts: "2-late" comes after "10-" and "90-".
    assert [f.name for f in files] == [
        "homeserver.yaml",
        ".hidden.yaml",
        "10-listeners.yaml",
        "2-late.yaml",
        "90-modules.yaml",
    ]
    assert warnings == []


def test_yml_files_and_subdirectories_are_ignored_with_a_warning(conf: Path) -> None:
    d = conf / "homeserver.d"
    write(d / "90-modules.yml", {"modules": [guard(network("10.0.0.0/8"))]})
    write(d / "sub" / "95-modules.yaml", {"modules": [guard(network("10.0.0.0/8"))]})
    write(d / "README", "notes")
    files, warnings = find_config_files(paths(conf))
    assert [f.name for f in files] == ["homeserver.yaml"]
    assert sorted(warnings) == [
        f"{d / '90-modules.yml'}: does not end in '.yaml', ignored (as Synapse does)",
        f"{d / 'README'}: does not end in '.yaml', ignored (as Synapse does)",
        f"{d / 'sub'}: not a regular file, ignored (as Synapse does)",
    ]
    with pytest.raises(SynapseConfigError, match=r"no `modules:` entry"):
        load_guard_entry(paths(conf))


def test_a_later_file_replaces_a_whole_top_level_key(conf: Path) -> None:
    d = conf / "homeserver.d"
    write(d / "10-a.yaml", {"modules": [guard(network("10.0.0.0/8"))], "retention": {"a": 1}})
    write(d / "20-b.yaml", {"modules": [{"module": "other.Module"}, guard(network("10.8.0.0/24"))]})
    config = read_config(paths(conf))
    assert config.values["retention"] == {"a": 1}
    assert config.origins["modules"] == d / "20-b.yaml"
    entry = load_guard_entry(paths(conf))
    assert entry.config == GuardConfig(network=allow_cidrs("10.8.0.0/24"))
    assert entry.modules_file == d / "20-b.yaml"
    assert entry.index == 1
    assert entry.files == (conf / "homeserver.yaml", d / "10-a.yaml", d / "20-b.yaml")


def test_a_later_modules_list_without_the_guard_removes_it(conf: Path) -> None:
    d = conf / "homeserver.d"
    write(d / "10-a.yaml", {"modules": [guard(network("10.0.0.0/8"))]})
    write(d / "20-b.yaml", {"modules": [{"module": "other.Module"}]})
    with pytest.raises(SynapseConfigError) as e:
        load_guard_entry(paths(conf))
    message = str(e.value)
    assert "no `modules:` entry with `module: synapse_guard.Guard`" in message
    assert f"`modules:` is set by {d / '20-b.yaml'}" in message
    assert "replaces every earlier list" in message


def test_a_file_given_after_the_directory_wins(conf: Path) -> None:
    write(conf / "homeserver.d" / "90-modules.yaml", {"modules": [guard(network("10.0.0.0/8"))]})
    override = write(conf / "override.yaml", {"modules": [guard(network("192.0.2.0/24"))]})
    entry = load_guard_entry([*paths(conf), str(override)])
    assert entry.config.network == allow_cidrs("192.0.2.0/24")
    assert entry.modules_file == override


def test_empty_and_non_mapping_files_are_ignored_with_a_warning(conf: Path) -> None:
    d = conf / "homeserver.d"
    write(d / "10-modules.yaml", {"modules": [guard(network("10.0.0.0/8"))]})
    write(d / "20-empty.yaml", "")
    write(d / "30-list.yaml", "- modules\n")
    entry = load_guard_entry(paths(conf))
    assert entry.config.network == allow_cidrs("10.0.0.0/8")
    assert entry.warnings == (
        f"{d / '20-empty.yaml'}: empty or not a key-value map, ignored (as Synapse does)",
        f"{d / '30-list.yaml'}: empty or not a key-value map, ignored (as Synapse does)",
    )


# The guard's entry ------------------------------------------------------------------------


def test_no_modules_at_all(conf: Path) -> None:
    with pytest.raises(SynapseConfigError) as e:
        load_guard_entry(paths(conf))
    assert str(e.value).startswith(
        f"no `modules:` entry with `module: synapse_guard.Guard` in the configuration read "
        f"from {conf / 'homeserver.yaml'}; none of them sets `modules:`"
    )


def test_modules_null_counts_as_none(conf: Path) -> None:
    write(conf / "homeserver.d" / "90-modules.yaml", "modules:\n")
    with pytest.raises(SynapseConfigError, match=r"no `modules:` entry"):
        load_guard_entry(paths(conf))


@pytest.mark.parametrize("config", [None, {}, "null"])
def test_a_missing_or_empty_config_gives_the_defaults(conf: Path, config: Any) -> None:
    entry: dict[str, Any] = {"module": "synapse_guard.Guard"}
    if config == "null":
        entry["config"] = None
    elif config is not None:
        entry["config"] = config
    write(conf / "homeserver.d" / "90-modules.yaml", {"modules": [entry]})
    assert load_guard_entry(paths(conf)).config == GuardConfig()


def test_the_class_under_its_defining_module_is_the_guard_too(conf: Path) -> None:
    write(
        conf / "homeserver.d" / "90-modules.yaml",
        {"modules": [guard({"registration": {"mode": "open"}}, "synapse_guard.module.Guard")]},
    )
    entry = load_guard_entry(paths(conf))
    assert entry.config == GuardConfig(registration=RegistrationPolicy(mode="open"))


def test_the_guard_listed_twice_is_refused(conf: Path) -> None:
    modules = write(
        conf / "homeserver.d" / "90-modules.yaml",
        {"modules": [guard(), {"module": "x.Y"}, guard(module="synapse_guard.module.Guard")]},
    )
    with pytest.raises(SynapseConfigError) as e:
        load_guard_entry(paths(conf))
    assert str(e.value) == (
        f"{modules}: synapse_guard.Guard is listed more than once (modules[0] and modules[2]); "
        "it must be loaded exactly once"
    )


def test_a_guard_config_error_names_the_file_and_the_full_key(conf: Path) -> None:
    modules = write(
        conf / "homeserver.d" / "90-modules.yaml",
        {"modules": [{"module": "x.Y"}, guard({"network": {"allow_cidrs": ["10.0.0.0/8", 7]}})]},
    )
    with pytest.raises(SynapseConfigError) as e:
        load_guard_entry(paths(conf))
    assert str(e.value) == (
        f"{modules}: modules[1].config.network.allow_cidrs[1]: "
        "must be a CIDR string such as '10.8.0.0/24', got 7"
    )


def test_an_unknown_guard_key_is_named(conf: Path) -> None:
    modules = write(conf / "homeserver.d" / "90-modules.yaml", {"modules": [guard({"netwrk": {}})]})
    with pytest.raises(SynapseConfigError, match=r"modules\[0\]\.config\.netwrk: unknown key") as e:
        load_guard_entry(paths(conf))
    assert str(e.value).startswith(f"{modules}: ")


@pytest.mark.parametrize(
    ("modules", "message"),
    [
        ({"module": "synapse_guard.Guard"}, "modules: must be a list, got dict"),
        ("synapse_guard.Guard", "modules: must be a list, got str"),
        (["synapse_guard.Guard"], "modules[0]: expected a mapping"),
        ([{"config": {}}], "modules[0].module: expected a string"),
        ([{"module": 3}], "modules[0].module: expected a string"),
    ],
)
def test_a_malformed_modules_list_is_refused(conf: Path, modules: Any, message: str) -> None:
    path = write(conf / "homeserver.d" / "90-modules.yaml", {"modules": modules})
    with pytest.raises(SynapseConfigError) as e:
        load_guard_entry(paths(conf))
    assert str(e.value) == f"{path}: {message}"


# Unreadable input -------------------------------------------------------------------------


def test_a_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(SynapseConfigError) as e:
        load_guard_entry([str(tmp_path / "nope.yaml")])
    assert str(e.value) == f"{tmp_path / 'nope.yaml'}: no such file or directory"


def test_no_path_at_all() -> None:
    with pytest.raises(SynapseConfigError, match="no config path given"):
        load_guard_entry([])


def test_invalid_yaml_is_named_with_its_position(conf: Path) -> None:
    bad = write(conf / "homeserver.d" / "90-modules.yaml", "modules: [\n  - module: x\n")
    with pytest.raises(SynapseConfigError) as e:
        load_guard_entry(paths(conf))
    assert str(e.value).startswith(f"{bad}: is not valid YAML: ")
    assert "line" in str(e.value)


def test_non_utf8_is_named(conf: Path) -> None:
    bad = conf / "homeserver.d" / "90-modules.yaml"
    bad.write_bytes(b"modules: [\xff]\n")
    with pytest.raises(SynapseConfigError, match=r"is not UTF-8 text") as e:
        load_guard_entry(paths(conf))
    assert str(e.value).startswith(f"{bad}: ")


# The same files, in the same order, merged the same way as Synapse ---------------------------

NAMES = st.text(alphabet=string.ascii_lowercase + string.digits + "-_.", min_size=1, max_size=8)
SUFFIXES = st.sampled_from([".yaml", ".yml", ".YAML", "", ".yaml.bak"])
KEYS = st.sampled_from(["modules", "retention", "listeners", "server_name", "x"])
CONTENT = st.one_of(
    st.dictionaries(KEYS, st.integers(0, 9), max_size=3),
    st.just(""),
    st.just("[1, 2]\n"),
)


@settings(max_examples=60)
@given(files=st.lists(st.tuples(NAMES, SUFFIXES, CONTENT), max_size=8))
def test_files_and_merge_match_synapse(
    tmp_path_factory: pytest.TempPathFactory, files: Any
) -> None:
    root = tmp_path_factory.mktemp("conf")
    main = write(root / "homeserver.yaml", {"server_name": "s", "report_stats": False})
    d = root / "conf.d"
    d.mkdir()
    for name, suffix, content in files:
        if name in (".", ".."):
            continue
        write(d / f"{name}{suffix}", content)
    search = [str(main), str(d)]

    ours, _ = find_config_files(search)
    theirs = synapse_find_config_files(search)
    assert [str(p) for p in ours] == theirs
    assert dict(read_config(search).values) == synapse_read_config_files(theirs)
