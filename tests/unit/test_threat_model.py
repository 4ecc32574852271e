"""The threat model cannot rot: every test it names exists, both languages list every threat.

docs/threat-model.md (English) and docs/threat-model.fr.md (French) mark each threat with
`<!-- threat: ID -->` before its heading and name tests as `tests/...py::function` (or
`::Class::method`). A renamed or deleted test, a threat missing from one language, or a
retention value that no longer matches the configuration fails here.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = {"en": ROOT / "docs" / "threat-model.md", "fr": ROOT / "docs" / "threat-model.fr.md"}

# The threats of issue 15, in the order the documents give them.
THREATS = (
    "seized-server",
    "seized-backup",
    "hostile-network",
    "blocked-domain",
    "stolen-phone",
    "push-provider",
    "compromised-account",
    "insider-admin",
    "legal-requisition",
    "move-host",
)

# The parts every threat has, per language.
PARTS = {
    "en": ("**The attack.**", "**What answers it.**", "**What remains.**"),
    "fr": ("**L'attaque.**", "**Ce qui y répond.**", "**Ce qui reste.**"),
}

# Durations the documents state, each as it is written in the file that sets it.
STATED_VALUES = (
    ("homeserver.d/40-privacy.yaml", "user_ips_max_age: 3d"),
    ("homeserver.d/40-privacy.yaml", "redaction_retention_period: 1d"),
    ("homeserver.d/40-privacy.yaml", "forget_rooms_on_leave: true"),
    ("homeserver.d/40-privacy.yaml", "forgotten_room_retention_period: 1d"),
    ("homeserver.d/60-retention.yaml", "max_lifetime: 7d"),
    ("homeserver.d/60-retention.yaml", "allowed_lifetime_max: 15d"),
    ("homeserver.d/60-retention.yaml", "interval: 6h"),
    ("homeserver.d/60-retention.yaml", "local_media_lifetime: 15d"),
    ("deploy/synapse/log.yaml", "backupCount: 6"),
    ("deploy/nginx/logrotate.conf", "rotate 1"),
    ("deploy/docker-compose.yml", "--storage.tsdb.retention.time=15d"),
    ("deploy/.env.example", "BACKUP_MAX_AGE_DAYS=15"),
)

MARKER = re.compile(r"^<!-- threat: ([a-z-]+) -->\n## (\d+)\. \S", re.MULTILINE)
TEST_REF = re.compile(r"(tests/[A-Za-z0-9_/]+\.py)::([A-Za-z_]\w*(?:::[A-Za-z_]\w*)?)")
REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:homeserver\.d|deploy|docs|tests|synapse_guard|scripts)/[\w./-]*\w)"
)


@cache
def text(lang: str) -> str:
    return DOCS[lang].read_text(encoding="utf-8")


@cache
def sections(lang: str) -> dict[str, str]:
    """Each threat's text, from its marker to the next level-2 heading."""
    doc = text(lang)
    found: dict[str, str] = {}
    for match in MARKER.finditer(doc):
        body_start = doc.index("\n", match.end()) + 1
        end = doc.find("\n## ", body_start)
        found[match.group(1)] = doc[match.start() : end if end != -1 else len(doc)]
    return found


def refs(chunk: str) -> set[str]:
    return {f"{path}::{name}" for path, name in TEST_REF.findall(chunk)}


@cache
def definitions(path: str) -> frozenset[str]:
    """The test functions and `Class::method` names a file defines at its top level."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"), filename=path)
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            names.update(
                f"{node.name}::{item.name}"
                for item in node.body
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
            )
    return frozenset(names)


@pytest.mark.parametrize("lang", sorted(DOCS))
def test_every_threat_is_there_once_in_order_with_its_number(lang: str) -> None:
    markers = [(m.group(1), int(m.group(2))) for m in MARKER.finditer(text(lang))]
    assert markers == [(threat, n) for n, threat in enumerate(THREATS, start=1)]


@pytest.mark.parametrize("lang", sorted(DOCS))
@pytest.mark.parametrize("threat", THREATS)
def test_every_threat_has_its_parts_and_names_at_least_one_test(lang: str, threat: str) -> None:
    section = sections(lang)[threat]
    positions = [section.find(part) for part in PARTS[lang]]
    assert -1 not in positions, (threat, PARTS[lang])
    assert positions == sorted(positions), (threat, PARTS[lang])
    assert refs(section), f"{threat} ({lang}) names no test"


@pytest.mark.parametrize("threat", THREATS)
def test_both_languages_name_the_same_tests_for_each_threat(threat: str) -> None:
    english, french = (refs(sections(lang)[threat]) for lang in ("en", "fr"))
    assert english == french, {"en only": english - french, "fr only": french - english}


def test_both_languages_name_the_same_tests_overall() -> None:
    assert refs(text("en")) == refs(text("fr"))


@pytest.mark.parametrize("lang", sorted(DOCS))
def test_every_named_test_exists(lang: str) -> None:
    missing = []
    for ref in sorted(refs(text(lang))):
        path, name = ref.split("::", 1)
        if not name.split("::")[-1].startswith("test"):
            missing.append(f"{ref} (not a test)")
        elif not (ROOT / path).is_file():
            missing.append(f"{ref} (no such file)")
        elif name not in definitions(path):
            missing.append(f"{ref} (not defined in {path})")
    assert not missing, missing


@pytest.mark.parametrize("lang", sorted(DOCS))
def test_every_repository_path_named_exists(lang: str) -> None:
    missing = sorted({path for path in REPO_PATH.findall(text(lang)) if not (ROOT / path).exists()})
    assert not missing, missing


@pytest.mark.parametrize(("source", "setting"), STATED_VALUES)
def test_the_durations_stated_are_the_configured_ones(source: str, setting: str) -> None:
    assert setting in (ROOT / source).read_text(encoding="utf-8"), (
        f"{source} no longer says {setting!r}: update the threat model's table"
    )
    for lang in DOCS:
        assert f"`{setting}" in text(lang), (lang, setting)


def test_the_readme_and_each_language_link_to_the_other() -> None:
    assert "(docs/threat-model.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(threat-model.fr.md)" in text("en")
    assert "(threat-model.md)" in text("fr")


def test_the_reference_pattern_reads_functions_and_methods() -> None:
    # The doc's own names only: a pattern that matched nothing would pass every check above.
    sample = "`tests/a/test_b.py::test_c`, tests/d.py::TestE::test_f and tests/g.py:test_h"
    assert refs(sample) == {"tests/a/test_b.py::test_c", "tests/d.py::TestE::test_f"}
    assert len(refs(text("en"))) >= 50
