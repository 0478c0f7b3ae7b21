"""The README's commands are the ones CI runs, and every link between the README and docs/ lands."""

from __future__ import annotations

import re
from pathlib import Path

from .conftest import ROOT

TEST_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest -q -n 6"


def test_the_readme_test_command_is_the_one_ci_runs():
    assert TEST_COMMAND in (ROOT / "README.md").read_text().splitlines()
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_readme_apt_line_installs_what_ci_installs():
    readme = (ROOT / "README.md").read_text()
    (line,) = [line for line in readme.splitlines() if line.startswith("sudo apt-get install ")]
    ci = (ROOT / ".ci" / "run").read_text()
    ci_packages = re.search(r"--no-install-recommends \\\n(.*?)>/dev/null", ci, re.S).group(1).split()
    assert set(line.split()[3:]) == set(ci_packages) - {"\\"}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set:
    return {slug(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


def test_every_link_between_the_readme_and_docs_lands():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            landing = (page.parent / path).resolve() if path else page
            if not landing.exists() or (anchor and anchor not in anchors(landing)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", (ROOT / "README.md").read_text()))
    assert linked == {p.name for p in (ROOT / "docs").glob("*.md")}  # no page the README does not lead to
