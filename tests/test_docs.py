"""The README's links into docs/ work on GitHub; `mkdocs build --strict` (make lint) checks the site's own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```.*?^```$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """The anchors of a page's headings, outside code blocks."""
    return {github_anchor(h) for h in re.findall(r"^#+ (.*)$", FENCE.sub("", markdown), re.MULTILINE)}


def readme_links() -> list[str]:
    """The README's links that stay in the repository: relative paths, or anchors of the README."""
    return [link for link in LINK.findall(FENCE.sub("", README)) if not re.match(r"[a-z]+:", link)]


def test_the_readme_links_to_every_docs_page() -> None:
    """Every page of docs/ is linked from the README, so that GitHub readers can reach it."""
    linked = {link.partition("#")[0] for link in readme_links()}
    pages = {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")} - {"docs/index.md"}
    assert pages <= linked, sorted(pages - linked)


@pytest.mark.parametrize("link", readme_links())
def test_a_readme_link_names_a_file_and_a_heading_that_exist(link: str) -> None:
    """A relative link of the README names a file of the repository, and its anchor a heading there."""
    path, _, anchor = link.partition("#")
    target = ROOT / path if path else ROOT / "README.md"
    assert target.exists(), f"README.md links to {path}, which does not exist"
    if anchor:
        assert anchor in anchors(target.read_text()), f"README.md: {link}: no heading with that anchor"
