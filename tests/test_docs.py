"""The README and docs/ are the contract with users: they must name and link what ships."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

import pytest

from vault_rotator.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_every_relative_link_resolves_inside_the_repository(page: Path) -> None:
    """A user's clone has no ../shared: every relative link must land on a file of the repo."""
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        resolved = (page.parent / target).resolve()
        assert resolved.is_relative_to(REPO), f"{page.name} links outside the repo: {target}"
        assert resolved.exists(), f"{page.name} links to a missing file: {target}"
    assert "../shared" not in page.read_text()


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    """Each VAULT_*/AROUTER_* name in the package's source appears in the README."""
    names = set()
    for source in (REPO / "vault_rotator").rglob("*.py"):
        names |= set(re.findall(r"\"((?:VAULT|AROUTER)_[A-Z_]+)\"", source.read_text()))
    assert "VAULT_ROTATOR_LOG_FORMAT" in names  # the scan finds what it should
    assert sorted(n for n in names if f"`{n}`" not in README) == []


def test_every_verb_and_flag_is_documented() -> None:
    """Every CLI verb and every --flag the parser accepts is named in the README."""
    missing: list[str] = []

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for verb, sub in action.choices.items():
                    if not re.search(rf"vault-rotator (?:\w+ .*)?{verb}\b", README):
                        missing.append(verb)
                    walk(sub)
            missing.extend(
                flag
                for flag in action.option_strings
                if flag.startswith("--") and flag != "--help" and flag not in README
            )

    walk(build_parser())
    assert missing == []


def test_packaging_uses_the_spdx_license_string() -> None:
    """The license is an SPDX string (the table form is deprecated), with setuptools >= 77."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    requires = project["build-system"]["requires"]
    (setuptools,) = [r for r in requires if r.startswith("setuptools")]
    assert int(re.findall(r">=(\d+)", setuptools)[0]) >= 77
