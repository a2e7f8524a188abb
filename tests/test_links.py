"""The documentation holds together: every relative link in README.md and docs/*.md (Markdown links
and images, inline or by reference) names a file of the repository, and a `#anchor` a heading of
that page (GitHub's slugs); every docs/*.md page is reachable from docs/index.md; and every script
the pages cite exists, or is named with the commit after which it was removed."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ID = re.compile(r"<a\s[^>]*(?:name|id)=\"([^\"]+)\"")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")


def prose_lines(text: str, keep_code_spans: bool = False):
    """(line number, line) of the text outside fenced code blocks, code spans blanked out unless
    kept (a heading's anchor is made from its code spans too)."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        opened = FENCE.match(line)
        if fence:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
            continue
        if opened:
            fence = opened.group(1)
            continue
        yield number, line if keep_code_spans else CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)


def links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown link and image on a page, code left out."""
    found = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        for match in INLINE.finditer(line):
            found.append((number, match.group(1).strip("<>")))
        ref = REFERENCE.match(line)
        if ref:
            found.append((number, ref.group(1).strip("<>")))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lower-cased, every character that is not a
    letter, digit, space, hyphen or underscore dropped, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays, its target goes
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor GitHub gives a page: each heading's slug (repeats numbered -1, -2, ...) and the
    ids of HTML anchors."""
    seen: dict[str, int] = {}
    result = set()
    text = page.read_text(encoding="utf-8")
    for _, line in prose_lines(text, keep_code_spans=True):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
    result.update(HTML_ID.findall(text))
    return result


def resolve(page: Path, target: str, root: Path) -> tuple[Path | None, str, str | None]:
    """Where a relative link leads: (file or folder, anchor, None) or (None, '', what is wrong)."""
    path, _, anchor = target.partition("#")
    destination = page if not path else (page.parent / unquote(path)).resolve()
    if root.resolve() not in (destination, *destination.parents):
        return None, "", "leads outside the repository"
    if not destination.exists():
        return None, "", "no such file"
    return destination, unquote(anchor), None


def broken_links(pages: list[Path], root: Path) -> list[str]:
    """'page:line: target (why)' for each relative link that does not resolve."""
    problems = []
    for page in pages:
        for number, target in links(page):
            if EXTERNAL.match(target):
                continue
            destination, anchor, why = resolve(page, target, root)
            if why is None and anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                why = f"no heading #{anchor} in {destination.relative_to(root.resolve())}"
            if why:
                problems.append(f"{page.relative_to(root)}:{number}: {target} ({why})")
    return problems


def unreachable(root: Path) -> list[str]:
    """The docs/*.md pages that no chain of links from docs/index.md reaches."""
    index = (root / "docs" / "index.md").resolve()
    seen, todo = {index}, [index]
    while todo:
        page = todo.pop()
        for _, target in links(page):
            if EXTERNAL.match(target):
                continue
            destination, _, why = resolve(page, target, root)
            if why is None and destination.suffix == ".md" and destination.is_file() and destination not in seen:
                seen.add(destination)
                todo.append(destination)
    return sorted(p.name for p in (root / "docs").glob("*.md") if p.resolve() not in seen)


def documentation(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "benchmarks").glob("*.md"))]


# --- the repository ---------------------------------------------------------------------------

def test_every_relative_link_resolves():
    pages = documentation(ROOT)
    assert len(pages) > 20
    assert sum(len(links(p)) for p in pages) > 100  # the extraction finds the links that are there
    problems = broken_links(pages, ROOT)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_every_docs_page_is_reachable_from_the_index():
    assert not unreachable(ROOT), f"pages no link from docs/index.md reaches: {unreachable(ROOT)}"


def test_readme_links_the_index():
    assert "docs/index.md" in [target.partition("#")[0] for _, target in links(ROOT / "README.md")]


def test_readme_is_a_short_guide():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the details belong in docs/"


REMOVED = re.compile(r"scripts/[\w./-]*\w")
CITED = re.compile(r"(?<![\w/.])benchmarks/[\w./-]*\w")


def test_every_cited_script_exists_or_names_the_commit_that_last_had_it():
    problems = []
    for page in documentation(ROOT):
        text = page.read_text(encoding="utf-8")
        for match in REMOVED.finditer(text):
            if not re.match(r"/?,?\s+removed\s+after\s+commit\s+[0-9a-f]{7,40}", text[match.end():]):
                problems.append(f"{page.relative_to(ROOT)}: {match.group(0)} (moved to benchmarks/, or removed: "
                                "say after which commit)")
        for match in CITED.finditer(text):
            if not (ROOT / match.group(0)).exists():
                problems.append(f"{page.relative_to(ROOT)}: {match.group(0)} (no such file)")
    assert not problems, "\n".join(problems)


def test_every_benchmark_script_is_mapped_in_the_benchmarks_readme():
    readme = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    scripts = sorted(p.name for p in (ROOT / "benchmarks").iterdir() if p.suffix in (".py", ".sh"))
    assert scripts
    missing = [name for name in scripts if f"[{name}]({name})" not in readme]
    assert not missing, f"benchmarks/README.md does not map {missing}"


# --- the checker itself fails where it should --------------------------------------------------

@pytest.fixture
def site(tmp_path):
    """A small repository: README, docs/index.md linking a.md, a.md with two headings, an image."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# Demo\n\n[index](docs/index.md), [a](docs/a.md#usage)\n")
    (tmp_path / "docs" / "index.md").write_text("# Index\n\n- [A](a.md)\n")
    (tmp_path / "docs" / "a.md").write_text(
        "# A page\n\n## Usage: the `--flag` option (v2)\n\n## Usage\n\n## Usage\n\n![plot](plot.png)\n"
        "See [the first](#usage-the---flag-option-v2), [the second](#usage-1) and [home](../README.md#demo).\n"
        "```bash\n# not a heading\necho [not](a-link.md)\n```\n"
        "Also `[not](a-link.md)` in code, and [out](https://example.org/missing.md).\n")
    (tmp_path / "docs" / "plot.png").write_bytes(b"png")
    return tmp_path


def check(root: Path) -> list[str]:
    return broken_links(documentation(root), root)


def test_a_correct_site_passes(site):
    assert check(site) == []
    assert unreachable(site) == []


def test_a_missing_page_fails(site):
    page = site / "docs" / "a.md"
    page.write_text(page.read_text() + "\nAnd [gone](gone.md).\n")
    assert check(site) == ["docs/a.md:17: gone.md (no such file)"]


def test_a_missing_image_fails(site):
    (site / "docs" / "plot.png").unlink()
    assert check(site) == ["docs/a.md:9: plot.png (no such file)"]


def test_a_missing_anchor_fails(site):
    (site / "README.md").write_text("# Demo\n\n[index](docs/index.md), [a](docs/a.md#usage-2)\n")
    assert check(site) == ["README.md:3: docs/a.md#usage-2 (no heading #usage-2 in docs/a.md)"]


def test_a_comment_in_a_code_block_is_no_heading(site):
    (site / "README.md").write_text("# Demo\n\n[index](docs/index.md), [a](docs/a.md#not-a-heading)\n")
    assert check(site) == ["README.md:3: docs/a.md#not-a-heading (no heading #not-a-heading in docs/a.md)"]


def test_a_reference_link_is_checked(site):
    (site / "README.md").write_text("# Demo\n\n[index][i]\n\n[i]: docs/nowhere.md\n")
    assert check(site) == ["README.md:5: docs/nowhere.md (no such file)"]


def test_a_link_outside_the_repository_fails(site):
    (site / "README.md").write_text("# Demo\n\n[index](docs/index.md) [x](../elsewhere.md)\n")
    (site.parent / "elsewhere.md").write_text("# there\n")
    assert check(site) == ["README.md:3: ../elsewhere.md (leads outside the repository)"]


def test_an_orphan_page_fails(site):
    (site / "docs" / "orphan.md").write_text("# Nobody links here\n")
    (site / "docs" / "b.md").write_text("# Reached through a.md\n")
    page = site / "docs" / "a.md"
    page.write_text(page.read_text() + "\n[b](b.md)\n")
    assert unreachable(site) == ["orphan.md"]


@pytest.mark.parametrize("heading,expected", [
    ("Table I on MRPC, three seeds: static truncation and the peers' recipes",
     "table-i-on-mrpc-three-seeds-static-truncation-and-the-peers-recipes"),
    ("The β step or the random stream? (`meta-no-update`)", "the-β-step-or-the-random-stream-meta-no-update"),
    ("Metrics (`GET /metrics`)", "metrics-get-metrics"),
    ("early exit at 1.5x layer speed-up", "early-exit-at-15x-layer-speed-up"),
    ("Rows of docs/TABLE1.md that share a training", "rows-of-docstable1md-that-share-a-training"),
    ("snake_case and [a link](x.md)", "snake_case-and-a-link"),
])
def test_slugs_are_githubs(heading, expected):
    assert slug(heading) == expected
