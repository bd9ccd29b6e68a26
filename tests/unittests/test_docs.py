"""README and docs/: short README, links that lead somewhere, commands that exist.

Authors
-------
 * sb_mamba developers
"""

import re

import pytest

from sb_mamba import cli
from tests.helpers import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _anchor(heading):
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lstrip("#").strip().lower())
    return text.replace(" ", "-")


def _outside_code(text):
    return re.sub(r"```.*?```", "", text, flags=re.S)


def test_readme_is_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme, f"README does not link docs/{page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_lead_somewhere(page):
    text = _outside_code(page.read_text())
    for groups in LINK.findall(text):
        target = next(g for g in groups if g)
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: {target} leads nowhere"
        if anchor and file.suffix == ".md":
            anchors = {
                _anchor(h) for h in re.findall(r"^#+ .*$", _outside_code(file.read_text()), re.M)
            }
            assert anchor in anchors, f"{page.name}: no heading #{anchor} in {file.name}"


def test_sb_mamba_commands_in_readme_and_docs_exist():
    """Every ``sb-mamba <command>`` the pages show is a subcommand of the CLI."""
    commands = set(cli.COMMANDS)
    for page in PAGES:
        for name in re.findall(r"`?sb-mamba ([a-z][a-z-]+)", page.read_text()):
            assert name in commands, f"{page.name}: sb-mamba {name} is not a command"
