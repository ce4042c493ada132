"""The documentation holds together: README.md and docs/*.md.

Every relative link reaches a file of the repository (and, with an anchor, a
heading of that file), nothing links outside the repository, the README stays
a short guide, and every repository path the pages name in backticks exists.
Pure Python: it reads the markdown files and nothing else.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))

# A newcomer reads the README in ten minutes; the reference lives in docs/.
README_MAX_LINES = 450

# Backticked text that starts with one of these and ends with one of those is
# taken for a path of this repository.
PATH_ROOTS = (
    "order/",
    "goods/",
    "order_history/",
    "shared/",
    "devstack/",
    "migrations/",
    "tests/",
    "bench/",
    "deploy/",
    "docker/",
    "docs/",
)
PATH_ENDINGS = (".py", ".sql", ".md", ".yml", ".json", ".sh", "/")
# Made by a run, git-ignored, so absent from a fresh clone.
MADE_BY_RUNS = ("bench/results/",)

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
URL = re.compile(r"https?://[^\s)>\]`'\"]+")
LOCAL_HOSTS = ("localhost", "127.0.0.1")
# What a path is made of: a span with spaces, placeholders (<service>) or globs names no one file.
PATH_CHARACTERS = re.compile(r"[A-Za-z0-9_./-]+")


def prose_lines(page: Path) -> list[str]:
    """The page's lines outside fenced code blocks (a fenced line becomes empty, so numbers stay)."""
    lines: list[str] = []
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return lines


def paragraphs(page: Path) -> list[tuple[int, str]]:
    """(first line number, text) of each paragraph outside code blocks: a link's text or a code span
    may run over a line break, never over a blank line."""
    found: list[tuple[int, str]] = []
    current: list[str] = []
    start = 1
    for number, line in enumerate([*prose_lines(page), ""], start=1):
        if line.strip():
            if not current:
                start = number
            current.append(line)
        elif current:
            found.append((start, "\n".join(current)))
            current = []
    return found


def spans(text: str) -> list[tuple[int, str]]:
    """(offset, content) of each inline code span of a paragraph."""
    return [(m.start(), m.group(2)) for m in CODE_SPAN.finditer(text)]


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text, lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    """Every heading's anchor in `page`; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose_lines(page):
        match = HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link and image outside code."""
    found: list[tuple[int, str]] = []
    for start, text in paragraphs(page):
        # Blank out code spans, keeping offsets: `[x](y)` inside code is an example, not a link.
        blanked = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), text)
        for match in LINK.finditer(blanked):
            found.append((start + text.count("\n", 0, match.start()), match.group(1)))
    return found


def named_paths(page: Path) -> list[tuple[int, str]]:
    """(line number, path) of every backticked text outside code blocks that looks like a repository path."""
    found: list[tuple[int, str]] = []
    for start, text in paragraphs(page):
        for offset, content in spans(text):
            named = content.strip()
            if (
                named.startswith(PATH_ROOTS)
                and named.endswith(PATH_ENDINGS)
                and PATH_CHARACTERS.fullmatch(named)
                and ".." not in named
            ):
                found.append((start + text.count("\n", 0, offset), named))
    return found


def host(url: str) -> str:
    match = re.match(r"https?://([^/:?#]+)", url)
    return match.group(1) if match else ""


def page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


def test_there_are_pages() -> None:
    assert (REPO / "README.md") in PAGES
    assert len(PAGES) > 1, "docs/*.md holds no page"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_reach_a_file_and_a_heading(page: Path) -> None:
    broken = []
    for number, target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, mailto: ...: the next test's
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(f"line {number}: {target}: no such file")
        elif not linked.is_relative_to(REPO):
            broken.append(f"line {number}: {target}: outside the repository")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"line {number}: {target}: {page_id(linked)} has no heading with the anchor #{anchor}")
    assert not broken, f"{page_id(page)}:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_nothing_links_outside_the_repository(page: Path) -> None:
    # Code blocks too: an example may call the local stack, nothing else.
    outside = [
        f"line {number}: {url}"
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1)
        for url in URL.findall(line)
        if host(url) not in LOCAL_HOSTS
    ]
    assert not outside, f"{page_id(page)} links outside the repository:\n" + "\n".join(outside)


def test_the_readme_is_a_short_guide() -> None:
    lines = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move reference material to docs/"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_named_repository_paths_exist(page: Path) -> None:
    missing = [
        f"line {number}: {path}"
        for number, path in named_paths(page)
        if not path.startswith(MADE_BY_RUNS) and not (REPO / path).exists()
    ]
    assert not missing, f"{page_id(page)} names paths that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Soak: 15 minutes of mixed load, before and after", "soak-15-minutes-of-mixed-load-before-and-after"),
        (
            "Asking for a bounded staleness: `Prefer: max-staleness`",
            "asking-for-a-bounded-staleness-prefer-max-staleness",
        ),
        ("The divergence sampler at 100k orders / 1M goods", "the-divergence-sampler-at-100k-orders--1m-goods"),
        ("... add a field to goods", "-add-a-field-to-goods"),
        ("`ORDER_HISTORY_*` settings", "order_history_-settings"),
    ],
)
def test_slugs_are_githubs(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


# "migration 0008", "migrations 0008 and 0009": numbers a page cites.
MIGRATION_CITED = re.compile(r"\bmigrations? ((?:\d{4}(?:,? (?:and |or )?)?)+)")
# A module named by its file name alone (`runner.py`), as the "How do I" answers do.
BARE_MODULE = re.compile(r"[a-z_][a-z0-9_]*\.py")
# "`path/to/module.py` `Name`": a name the page says that module defines.
PATH_THEN_NAME = re.compile(r"`([a-z_][a-z0-9_/]*\.py)`[ \n]+`([A-Za-z_][A-Za-z0-9_]*)")
SOURCE_ROOTS = ("order", "goods", "order_history", "shared", "devstack", "bench", "tests")


@cache
def module_names() -> frozenset[str]:
    """The file names of every Python module of the repository's packages, tests and bench."""
    return frozenset(path.name for root in SOURCE_ROOTS for path in (REPO / root).rglob("*.py"))


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_cited_migration_numbers_exist(page: Path) -> None:
    numbers = {path.name[:4] for path in (REPO / "migrations").glob("*/*.sql")}
    missing = [
        f"line {start + text.count(chr(10), 0, match.start())}: migration {number}"
        for start, text in paragraphs(page)
        for match in MIGRATION_CITED.finditer(text)
        for number in re.findall(r"\d{4}", match.group(1))
        if number not in numbers
    ]
    assert not missing, f"{page_id(page)} cites migrations that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_modules_named_by_their_file_name_exist(page: Path) -> None:
    missing = [
        f"line {start + text.count(chr(10), 0, offset)}: {content}"
        for start, text in paragraphs(page)
        for offset, content in spans(text)
        if BARE_MODULE.fullmatch(content.strip()) and content.strip() not in module_names()
    ]
    assert not missing, f"{page_id(page)} names modules no package has:\n" + "\n".join(missing)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_names_said_to_be_in_a_module_are_there(page: Path) -> None:
    wrong = []
    for start, text in paragraphs(page):
        for match in PATH_THEN_NAME.finditer(text):
            path, name = REPO / match.group(1), match.group(2)
            if "/" not in match.group(1):  # a file name alone: the one module of that name, if only one
                same = [found for root in SOURCE_ROOTS for found in (REPO / root).rglob(match.group(1))]
                path = same[0] if len(same) == 1 else path
            if path.is_file() and not re.search(rf"\b{re.escape(name)}\b", path.read_text(encoding="utf-8")):
                line = start + text.count("\n", 0, match.start())
                wrong.append(f"line {line}: {match.group(1)} has no {name}")
    assert not wrong, f"{page_id(page)}:\n" + "\n".join(wrong)
