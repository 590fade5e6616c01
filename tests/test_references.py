"""Cross-references in the text resolve: every "chapter N" names a chapter of the table of contents, every named
section is a heading of that chapter, every {ref} has its label and every relative link its file.

The chapters that exist are read from `_toc.yml` (the numbered part, in order) and the files it lists, never
hard-coded: a chapter that is planned but not written cannot be cited as if it were there.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

# "chapter 3", "Chapters 1 and 2", "chapters 6 to 8", "chapters 1, 2 and 4"
CHAPTER_REF = re.compile(r"\b[Cc]hapters?\s+(\d+)((?:\s*(?:,|and|or|to|–|-)\s*\d+)*)")
# section *Title*, section "Title", sections "A", "B" and "C"
SECTION_REF = re.compile(r"\b[Ss]ections?\s+((?:[*\"][^*\"\n]+[*\"](?:,\s*|\s+and\s+)?)+)")
QUOTED = re.compile(r"[*\"]([^*\"\n]+)[*\"]")
REF_ROLE = re.compile(r"\{(?:ref|numref)\}`(?:[^`<]*<)?([^`>]+)>?`")
LABEL = re.compile(r"^\(([\w-]+)\)=\s*$", re.MULTILINE)
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)


def _numbered_chapters(toc_path: Path | None = None) -> list[list[str]]:
    """Per chapter of the numbered parts, in order: its file and the files of all its sections (no suffix)."""

    def files(entry: dict) -> list[str]:
        found = [entry["file"]]
        for child in entry.get("sections", []):
            found += files(child)
        return found

    toc = yaml.safe_load((toc_path or REPO / "_toc.yml").read_text(encoding="utf-8"))
    return [files(ch) for part in toc.get("parts", []) if part.get("numbered") for ch in part["chapters"]]


def _source_path(stem: str) -> Path | None:
    for suffix in (".md", ".ipynb"):
        if (REPO / f"{stem}{suffix}").is_file():
            return REPO / f"{stem}{suffix}"
    return None


def existing_chapters() -> dict[int, list[Path]]:
    """Chapter number -> its source files, for each numbered chapter whose own file exists."""
    chapters = {}
    for number, stems in enumerate(_numbered_chapters(), start=1):
        if _source_path(stems[0]) is not None:
            chapters[number] = [p for p in map(_source_path, stems) if p is not None]
    return chapters


def _texts(markdown_only: bool = False) -> list[tuple[str, str]]:
    """(where, text) for every book page and every cell of the labs and the course's source notebooks."""
    found = [(str(p.relative_to(REPO)), p.read_text(encoding="utf-8")) for p in sorted((REPO / "book").glob("*.md"))]
    for path in sorted((REPO / "notebooks").glob("*.ipynb")) + sorted((REPO / "course" / "source").rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        for i, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            if markdown_only and cell["cell_type"] != "markdown":
                continue
            found.append((f"{path.relative_to(REPO)} cell {i}", "".join(cell["source"])))
    return found


def chapter_numbers(match: re.Match) -> list[int]:
    """The chapter numbers one CHAPTER_REF match names; "6 to 8" is a range."""
    numbers = [int(match.group(1))]
    for sep, number in re.findall(r"(,|and|or|to|–|-)\s*(\d+)", match.group(2)):
        numbers += range(numbers[-1] + 1, int(number) + 1) if sep in ("to", "–", "-") else [int(number)]
    return numbers


def _cites_another_work(text: str, match: re.Match) -> bool:
    """ "chapters 6 to 8 of {cite:t}`goodfellow2016deep`" is about another book, not this one."""
    return text[match.end():match.end() + 12].lstrip().startswith("of {cite")


def chapter_references(text: str) -> list[tuple[int, str]]:
    """(number, the words around it) for each reference to a chapter of this book in ``text``."""
    refs = []
    for match in CHAPTER_REF.finditer(text):
        if not _cites_another_work(text, match):
            context = text[max(0, match.start() - 40):match.end() + 40].replace("\n", " ")
            refs += [(n, context) for n in chapter_numbers(match)]
    return refs


def _normalize(title: str) -> str:
    """A heading as plain words: no markup, $\\sqrt{H}$ written √H, spaces collapsed, lower case."""
    title = re.sub(r"\\sqrt\{?(\w+)\}?", r"√\1", title)
    return re.sub(r"\s+", " ", re.sub(r"[`*_$]", "", title)).strip().lower()


def headings(paths: list[Path]) -> set[str]:
    """The normalized headings of markdown pages and of notebooks' markdown cells."""
    found = set()
    for path in paths:
        if path.suffix == ".md":
            text = path.read_text(encoding="utf-8")
        else:
            cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
            text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        text = re.sub(r"^(```|:::).*?^\1", "", text, flags=re.MULTILINE | re.DOTALL)  # no headings inside code
        found |= {_normalize(h) for h in HEADING.findall(text)}
    return found


def section_references(text: str) -> list[tuple[int | None, str]]:
    """(chapter, title) for each named section: the chapter is the last one named before it in ``text``, if any."""
    refs = []
    for match in SECTION_REF.finditer(text):
        before = [m for m in CHAPTER_REF.finditer(text[:match.start()]) if not _cites_another_work(text, m)]
        chapter = chapter_numbers(before[-1])[-1] if before else None
        refs += [(chapter, title) for title in QUOTED.findall(match.group(1))]
    return refs


# ---------------------------------------------------------------------------------------------------- the helpers


def test_chapter_references_are_parsed_with_ranges_and_lists():
    text = "See chapter 3, Chapters 1 and 2, chapters 4 to 6 and chapters 6 to 8 of {cite:t}`goodfellow2016deep`."
    assert [n for n, _ in chapter_references(text)] == [3, 1, 2, 4, 5, 6]


def test_section_references_take_the_chapter_named_before_them():
    text = 'The ideas are in [Chapter 1](x.md), section *Why scale mattered*. Chapter 3, sections "A", "B" and "C".'
    assert section_references(text) == [(1, "Why scale mattered"), (3, "A"), (3, "B"), (3, "C")]


def test_existing_chapters_follow_the_toc_and_the_files(tmp_path, monkeypatch):
    (tmp_path / "book").mkdir()
    for name in ["a", "c"]:
        (tmp_path / "book" / f"{name}.md").write_text("# A\n")
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: book/a\nparts:\n  - caption: Main\n    numbered: true\n    chapters:\n"
        "      - file: book/a\n      - file: book/b\n      - file: book/c\n        sections:\n"
        "          - file: book/d\n  - caption: Appendix\n    chapters:\n      - file: book/e\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert _numbered_chapters(tmp_path / "_toc.yml") == [["book/a"], ["book/b"], ["book/c", "book/d"]]
    assert sorted(existing_chapters()) == [1, 3]  # chapter 2 is listed but not written


# ---------------------------------------------------------------------------------------------------- the book


def test_every_chapter_reference_names_a_chapter_that_exists():
    chapters = existing_chapters()
    bad = [f"{where}: chapter {n} in '…{context}…'" for where, text in _texts() for n, context in
           chapter_references(text) if n not in chapters]
    assert not bad, f"chapters that exist: {sorted(chapters)}; references to others:\n" + "\n".join(bad)


def test_every_named_section_is_a_heading_of_its_chapter():
    chapters = existing_chapters()
    everywhere = headings(sorted((REPO / "book").glob("*.md")))
    bad = []
    for where, text in _texts():
        for chapter, title in section_references(text):
            known = headings(chapters[chapter]) if chapter in chapters else everywhere
            if _normalize(title) not in known:
                bad.append(f"{where}: section '{title}' of chapter {chapter}")
    assert not bad, "\n".join(bad)


def test_every_ref_has_a_label_and_every_relative_link_a_file():
    pages = sorted((REPO / "book").glob("*.md"))
    labels = {label for page in pages for label in LABEL.findall(page.read_text(encoding="utf-8"))}
    bad = []
    for where, text in _texts(markdown_only=True):
        bad += [f"{where}: {{ref}} to unknown label '{label}'" for label in REF_ROLE.findall(text)
                if label not in labels]
        base = REPO / where.split(" cell ")[0]
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+:|^#", target):  # a web address or a link inside the page
                continue
            if not (base.parent / target.split("#")[0]).resolve().is_file():
                bad.append(f"{where}: link to missing file '{target}'")
    assert not bad, "\n".join(bad)


def test_every_chapter_file_is_in_the_table_of_contents():
    listed = {stem for stems in _numbered_chapters() for stem in stems}
    unlisted = [p.name for p in sorted((REPO / "book").glob("ch[0-9]*.md")) if f"book/{p.stem}" not in listed]
    assert not unlisted, f"chapter pages missing from _toc.yml: {unlisted}"


@pytest.mark.parametrize("page, heading", [("book/intro.md", "The chapters"),
                                           ("book/ch01_background.md", "What this book covers")])
def test_chapter_lists_name_exactly_the_chapters_that_exist(page, heading):
    text = (REPO / page).read_text(encoding="utf-8")
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    listed = [int(n) for n in re.findall(r"^(\d+)\.\s+\*\*", section, flags=re.MULTILINE)]
    assert listed == sorted(existing_chapters()), f"{page} lists chapters {listed}"


def test_every_citation_has_a_bibliography_entry():
    keys = set(re.findall(r"^@\w+\{([^,\s]+),", (REPO / "references.bib").read_text(encoding="utf-8"), re.MULTILINE))
    cited = {(where, key.strip()) for where, text in _texts(markdown_only=True)
             for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", text) for key in group.split(",")}
    missing = sorted(f"{where}: {key}" for where, key in cited if key not in keys)
    assert not missing, "\n".join(missing)


def test_every_bibliography_key_carries_its_entry_year():
    """A key such as vaswani2017attention names the year of the version cited, so the text's "(Author, year)" and
    the key cannot disagree (a renamed key was once left with the preprint's year)."""
    text = (REPO / "references.bib").read_text(encoding="utf-8")
    wrong = []
    for key, body in re.findall(r"^@\w+\{([^,\s]+),(.*?)^\}", text, re.MULTILINE | re.DOTALL):
        year = re.search(r"^\s*year\s*=\s*\{?(\d{4})", body, re.MULTILINE)
        in_key = re.search(r"(\d{4})", key)
        if year and in_key and in_key.group(1) != year.group(1):
            wrong.append(f"{key}: year = {year.group(1)}")
    assert not wrong, "keys whose year is not the entry's year:\n" + "\n".join(wrong)
