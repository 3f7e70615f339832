"""The documentation's links between its pages and sections lead somewhere, and its command lines parse."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "data_manifests" / "README.md",
         ROOT / "tfmed" / "datasets" / "pneumoniamnist" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(page: Path) -> set:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    titles = re.findall(r"^#{1,6} (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-") for title in titles}


def local_links(page: Path) -> list:
    """(target file, anchor or None) for each link of a page that stays inside the repository."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    links = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        links.append(((page.parent / path).resolve() if path else page, anchor or None))
    return links


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_local_link_and_anchor_exists(page):
    for target, anchor in local_links(page):
        assert target.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
        if anchor is not None:
            assert anchor in heading_anchors(target), \
                f"{page.relative_to(ROOT)} links to #{anchor} in {target.name}, which has no such heading"


def test_the_readme_and_the_studies_link_to_each_other():
    assert (ROOT / "docs" / "studies.md", "retinamnist-the-multi-class-recipe") in local_links(ROOT / "README.md")
    assert (ROOT / "README.md", "held-out-figures") in local_links(ROOT / "docs" / "studies.md")


def test_the_anchor_rule_matches_githubs_on_punctuated_headings(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# RetinaMNIST: the multi-class recipe\n\n```\n# not a heading\n```\n"
                    "### Large training sets in features + SVM mode\n")
    assert heading_anchors(page) == {"retinamnist-the-multi-class-recipe",
                                     "large-training-sets-in-features--svm-mode"}


def readme_commands() -> list:
    """The ``tfmed ...`` lines of the README's Command line section, without comments and ``[optional]`` parts."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    lines = [re.sub(r"\s+#.*$", "", line) for line in block.splitlines() if line.startswith("tfmed ")]
    return [re.sub(r"\[[^\]]*\]", "", line) for line in lines]


def test_every_command_line_example_of_the_readme_parses():
    """A renamed option or verb makes the README's example fail here, not in a user's shell."""
    import shlex

    from tfmed.run.cli import _parser

    commands = readme_commands()
    assert len(commands) >= 20
    parser = _parser()
    for command in commands:
        try:
            parser.parse_args(shlex.split(command)[1:])
        except SystemExit:
            pytest.fail(f"the README's example does not parse: {command}")
