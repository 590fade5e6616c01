"""Run the nbgrader course in course/: the student release, collecting, autograding, feedback and grades.

Each command runs the nbgrader commands a teacher would type in course/, for every assignment (or those named), and
adds the checks nbgrader does not make:

    python scripts/course.py release     # nbgrader generate_assignment, then scan the release for leaked answers
    python scripts/course.py publish     # nbgrader release_assignment: copy the release to the exchange (--force)
    python scripts/course.py collect     # nbgrader collect: submissions to submitted/ (--update, --student)
    python scripts/course.py autograde   # nbgrader autograde, then flag edited read-only cells (--force, --student)
    python scripts/course.py integrity   # only the check of read-only cells (after grading in the formgrader)
    python scripts/course.py feedback    # nbgrader generate_feedback: HTML in course/feedback/ (--force, --student)
    python scripts/course.py return      # nbgrader release_feedback: the reports to the exchange (--student)
    python scripts/course.py export      # every student of the roster, every graded assignment: course/grades.csv
    python scripts/course.py scores      # the score of every part of every submission (--json for a program)
    python scripts/course.py roster --file roster.csv           # nbgrader db student import (id,first_name,...)
    python scripts/course.py due NAME --at "2026-03-01 23:59 UTC"  # nbgrader db assignment add NAME --duedate
    python scripts/course.py extend NAME --student ID --days 2  # one student's extension, in the gradebook
    python scripts/course.py reseed --term 2026-spring          # new seeds for the hidden tests (then release)

Options may come before or after the assignment names. ``--force``, ``--update`` and ``--student`` are passed to
the nbgrader commands that take them: re-publish a fixed assignment (``release`` then ``publish --force``), accept a
resubmission (``collect --update``), regrade one student (``autograde --force --student ID``). ``make assignments``
runs ``release``. Give ``--course DIR`` for a course directory other than this repository's.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import nbformat

REPO = Path(__file__).resolve().parents[1]
DELIMITERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
INTEGRITY_CSV = "integrity.csv"
GRADES_CSV = "grades.csv"


# ---- running nbgrader ---------------------------------------------------------------------------------------------


def nbgrader(course: Path, *args: str) -> int:
    """Run ``nbgrader *args`` in ``course`` with this interpreter; return its exit status."""
    env = dict(os.environ)
    # nbgrader's gradebook code triggers SQLAlchemy deprecation warnings on every command; they are nbgrader's, not
    # the course's, and say nothing about the grades (book/instructor_guide.md, "Messages you can ignore").
    env.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    # nbgrader starts alembic (for its database) by name, so this interpreter's scripts must be on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    print("$ nbgrader " + " ".join(args), flush=True)
    return subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env).returncode


def assignments(course: Path, names: list[str]) -> list[str]:
    found = sorted(p.name for p in (course / "source").iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = sorted(set(names) - set(found))
    if unknown:
        raise SystemExit(f"no assignment {', '.join(unknown)} in {course / 'source'}; there are {', '.join(found)}")
    return names or found


def notebooks(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))


# ---- the release must not leak answers ----------------------------------------------------------------------------


def _regions(source: str) -> Iterator[tuple[bool, str]]:
    """(inside a solution or hidden-test region, line) for each line of a cell of the source notebook."""
    inside = False
    for line in source.splitlines():
        if any(f"BEGIN {kind}" in line for kind in ("SOLUTION", "HIDDEN TESTS")):
            inside = True
        elif any(f"END {kind}" in line for kind in ("SOLUTION", "HIDDEN TESTS")):
            inside = False
        else:
            yield inside, line.strip()


def scan_release(source_nb: Path, release_nb: Path) -> list[str]:
    """Problems with one released notebook: nbgrader's markers, outputs, or any line of a solution or hidden test.

    A secret line is one that occurs in a solution or hidden-test region of the source and nowhere else in it; the
    release must contain none of them, as a line or (if 12 characters or longer) inside a line.
    """
    source, release = nbformat.read(source_nb, as_version=4), nbformat.read(release_nb, as_version=4)
    secret, public = set(), set()
    for cell in source.cells:
        for inside, line in _regions(cell.source):
            (secret if inside else public).add(line)
    secret -= public | {""}
    problems = []
    for index, cell in enumerate(release.cells):
        where = f"{release_nb.name} cell {index}"
        text = cell.source + json.dumps(cell.get("outputs", []))
        problems += [f"{where}: contains {marker!r}" for marker in DELIMITERS if marker in text]
        if cell.get("outputs"):
            problems.append(f"{where}: has outputs")
        lines = {line.strip() for line in cell.source.splitlines()}
        problems += [f"{where}: contains solution or hidden-test code {line!r}" for line in sorted(secret)
                     if line in lines or (len(line) >= 12 and line in cell.source)]
    return problems


def release(course: Path, names: list[str]) -> int:
    status = 0
    for name in names:
        if nbgrader(course, "generate_assignment", name, "--force"):
            status = 1
            continue
        problems = [p for nb in notebooks(course / "source" / name)
                    for p in scan_release(nb, course / "release" / name / nb.name)]
        for problem in problems:
            print(f"LEAK {name}/{problem}", file=sys.stderr)
        status |= bool(problems)
        print(f"{name}: released to {course / 'release' / name}; scanned: "
              f"{'IT LEAKS ANSWERS' if problems else 'no solution code and no hidden test in it'}")
    return status


# ---- read-only cells must come back as they went out --------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """A read-only cell that a submission changed: grading used the original, and the teacher should look."""

    assignment: str
    student: str
    notebook: str
    cell: str  # the cell's grade_id
    problem: str


def _locked(nb: Any) -> list[tuple[str, Any]]:
    return [(c.metadata.nbgrader.get("grade_id", ""), c) for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("locked")]


def check_notebook(release_nb: Any, submitted_nb: Any) -> list[tuple[str, str]]:
    """(cell id, problem) for each read-only cell of the release that the submission deleted, edited or moved."""
    problems = []
    submitted: dict[str, list[Any]] = {}
    for cell in submitted_nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id:
            submitted.setdefault(grade_id, []).append(cell)
    for grade_id, original in _locked(release_nb):
        copies = submitted.get(grade_id, [])
        if not copies:
            problems.append((grade_id, "deleted (or its nbgrader metadata removed)"))
            continue
        if len(copies) > 1:
            problems.append((grade_id, f"appears {len(copies)} times"))
        cell = copies[0]
        if cell.cell_type != original.cell_type or cell.source != original.source:
            problems.append((grade_id, "edited"))
        keys = ("grade", "solution", "locked", "points")
        if any(cell.metadata.nbgrader.get(k) != original.metadata.nbgrader.get(k) for k in keys):
            problems.append((grade_id, "nbgrader metadata changed (points, locked, grade or solution)"))
    order = [grade_id for grade_id, _ in _locked(release_nb)]
    seen = [gid for gid in (c.metadata.get("nbgrader", {}).get("grade_id") for c in submitted_nb.cells) if gid in order]
    if list(dict.fromkeys(seen)) != [gid for gid in order if gid in seen]:
        problems.append((order[0], "read-only cells moved out of their order"))
    first_code = next((c for c in submitted_nb.cells if c.cell_type == "code"), None)
    setup = [c for _, c in _locked(release_nb) if c.cell_type == "code"][:1]
    if setup and first_code is not None and first_code.metadata.get("nbgrader", {}).get("grade_id") != \
            setup[0].metadata.nbgrader.grade_id:
        problems.append((setup[0].metadata.nbgrader.grade_id, "a code cell was put above it (graded after it)"))
    return problems


def check_integrity(course: Path, name: str) -> list[Finding]:
    """Compare every submitted notebook of assignment ``name`` with the release the students received."""
    findings = []
    for folder in sorted((course / "submitted").glob(f"*/{name}")):
        student = folder.parent.name
        for release_nb in notebooks(course / "release" / name):
            path = folder / release_nb.name
            if not path.exists():
                continue  # nbgrader gives a missing notebook zero
            try:
                submitted_nb = nbformat.read(path, as_version=4)
            except Exception as error:  # not JSON, not a notebook: nbgrader reports it too
                findings.append(Finding(name, student, release_nb.stem, "", f"unreadable notebook ({error})"))
                continue
            for cell, problem in check_notebook(nbformat.read(release_nb, as_version=4), submitted_nb):
                findings.append(Finding(name, student, release_nb.stem, cell, problem))
    return findings


def record_findings(course: Path, name: str, findings: list[Finding]) -> None:
    """Flag each changed test cell for manual review in the gradebook, and write course/integrity.csv."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for f in findings:
            try:
                grade = gb.find_grade(f.cell, f.notebook, f.assignment, f.student)
            except MissingEntry:  # not a graded cell (a read-only text or helper cell), or not autograded
                continue
            grade.needs_manual_grade = True
        gb.db.commit()
    path = course / INTEGRITY_CSV
    rows = [r for r in _read_csv(path) if r["assignment"] != name]
    rows += [dict(assignment=f.assignment, student=f.student, notebook=f.notebook, cell=f.cell, problem=f.problem)
             for f in findings]
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, ["assignment", "student", "notebook", "cell", "problem"])
        writer.writeheader()
        writer.writerows(rows)


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- grades -------------------------------------------------------------------------------------------------------


def scores(course: Path, names: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """{assignment: {student: {"total": score, "parts": {cell: score}, "flagged": [cells for manual review]}}}."""
    from nbgrader.api import Gradebook

    out: dict[str, dict[str, dict[str, Any]]] = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for name in names:
            out[name] = {}
            for submission in gb.assignment_submissions(name):
                grades = [g for nb in submission.notebooks for g in nb.grades]
                out[name][submission.student_id] = {
                    "total": submission.score,
                    "parts": {g.name: g.score for g in grades if g.max_score > 0},
                    "flagged": sorted(g.name for g in grades if g.needs_manual_grade)}
    return out


def print_scores(course: Path, names: list[str]) -> None:
    for name, students in scores(course, names).items():
        for student, result in sorted(students.items()):
            detail = ", ".join(f"{cell} {score:g}" for cell, score in result["parts"].items())
            flagged = f"; flagged for review: {', '.join(result['flagged'])}" if result["flagged"] else ""
            print(f"{name} {student}: {result['total']:g} ({detail}){flagged}")


# ---- students, due dates, extensions, export -----------------------------------------------------------------------

EXPORT_COLUMNS = ["student_id", "first_name", "last_name", "email", "assignment", "status", "raw_score",
                  "late_penalty", "score", "max_score", "timestamp", "due"]


def extend(course: Path, name: str, student: str, days: float) -> None:
    """Give ``student`` ``days`` more days for assignment ``name`` (0 removes the extension)."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        gb.find_assignment(name)  # the assignment must be known: `release` or `due` adds it
        try:
            gb.find_student(student)
        except MissingEntry:
            gb.add_student(student)
        try:
            gb.find_submission(name, student)
        except MissingEntry:  # not submitted yet: an empty submission carries the extension until autograde
            gb.update_or_create_submission(name, student)
        gb.grant_extension(name, student, minutes=round(days * 24 * 60))
    print(f"{student} has {days:g} more days for {name}")


def export(course: Path) -> list[dict[str, Any]]:
    """One row per student of the gradebook (the roster) and per assignment that has been graded at least once.

    A student without a submission gets status "missing" and score 0; an assignment nobody has been graded on yet
    is left out (a zero there would mean nothing). Score = raw score - late penalty, as nbgrader computes it.
    """
    from nbgrader.api import Gradebook, MissingEntry

    rows = []
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        graded = [a for a in gb.assignments if any(s.timestamp is not None or s.score for s in a.submissions)]
        for student in sorted(gb.students, key=lambda s: s.id):
            for assignment in sorted(graded, key=lambda a: a.name):
                row = dict(student_id=student.id, first_name=student.first_name or "",
                           last_name=student.last_name or "", email=student.email or "", assignment=assignment.name,
                           max_score=assignment.max_score, due=assignment.duedate or "")
                try:
                    sub = gb.find_submission(assignment.name, student.id)
                except MissingEntry:
                    sub = None
                if sub is None or sub.timestamp is None:
                    row.update(status="missing", raw_score=0.0, late_penalty=0.0, score=0.0, timestamp="")
                else:
                    penalty = sub.late_submission_penalty or 0.0
                    row.update(status="late" if sub.total_seconds_late > 0 else "on time", raw_score=sub.score,
                               late_penalty=penalty, score=max(0.0, sub.score - penalty), timestamp=sub.timestamp)
                rows.append(row)
    with open(course / GRADES_CSV, "w", newline="") as out:
        writer = csv.DictWriter(out, EXPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} rows ({len({r['student_id'] for r in rows})} students) written to {course / GRADES_CSV}")
    return rows


# ---- new hidden inputs each term ----------------------------------------------------------------------------------

_SEED = re.compile(r"default_rng\(([0-9_]+)\)")


def term_seed(term: str, assignment: str) -> int:
    """A seed of nine digits derived from the term's label and the assignment: the same label, the same seed."""
    return int(hashlib.sha256(f"{term}/{assignment}".encode()).hexdigest(), 16) % 900_000_000 + 100_000_000


def reseed(course: Path, names: list[str], term: str) -> dict[str, int]:
    """Give the hidden inputs of each assignment a seed of this term: rewrite ``default_rng(...)`` inside the hidden
    region of its setup cell. Students who kept last term's feedback or answers then face new hidden inputs."""
    seeds = {}
    for name in names:
        seed = seeds[name] = term_seed(term, name)
        for path in notebooks(course / "source" / name):
            nb = nbformat.read(path, as_version=4)
            setup = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "setup")
            head, hidden = setup.source.split("### BEGIN HIDDEN TESTS", 1)
            if not _SEED.search(hidden):
                raise SystemExit(f"{path}: no default_rng(<seed>) in the setup cell's hidden tests")
            setup.source = head + "### BEGIN HIDDEN TESTS" + _SEED.sub(f"default_rng({seed:_})", hidden)
            nbformat.write(nb, path)
        print(f"{name}: hidden inputs now drawn with seed {seed:_} (term {term}); run `release` again")
    return seeds


# ---- the commands -------------------------------------------------------------------------------------------------


COMMANDS = ["release", "publish", "collect", "autograde", "integrity", "feedback", "return", "export", "scores",
            "roster", "due", "extend", "reseed"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("assignments", nargs="*", help="assignment names (default: every one in source/)")
    parser.add_argument("--course", type=Path, default=REPO / "course", help="the course directory")
    parser.add_argument("--json", action="store_true", help="scores: print JSON")
    parser.add_argument("--force", action="store_true", help="publish, autograde, feedback: redo what exists")
    parser.add_argument("--update", action="store_true", help="collect: replace older submissions by newer ones")
    parser.add_argument("--student", help="collect, autograde, feedback, return, extend: only this student")
    parser.add_argument("--file", type=Path, help="roster: a CSV with columns id,first_name,last_name,email")
    parser.add_argument("--at", help='due: the due date, e.g. "2026-03-01 23:59:00 UTC"')
    parser.add_argument("--days", type=float, help="extend: days of extension (0 removes it)")
    parser.add_argument("--term", help="reseed: a label of the term, such as 2026-spring")
    return parser.parse_intermixed_args(argv)  # options before, between or after the assignment names


def passed_on(args: argparse.Namespace, command: str) -> list[str]:
    """The options of ours that nbgrader's ``command`` takes too."""
    takes = {"release_assignment": ("force",), "collect": ("update", "student"),
             "autograde": ("force", "student"), "generate_feedback": ("force", "student"),
             "release_feedback": ("student",)}[command]
    out = [f"--{flag}" for flag in ("force", "update") if flag in takes and getattr(args, flag)]
    return out + ([f"--student={args.student}"] if "student" in takes and args.student else [])


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    course = args.course.resolve()
    if args.command == "roster":
        if not args.file:
            raise SystemExit("roster needs --file ROSTER.csv (columns id,first_name,last_name,email)")
        return 1 if nbgrader(course, "db", "student", "import", str(args.file.resolve())) else 0
    if args.command == "export":
        export(course)
        return 0
    names = assignments(course, args.assignments)
    status = 0
    if args.command in ("due", "extend"):
        if len(args.assignments) != 1:
            raise SystemExit(f"{args.command} takes one assignment name")
        if args.command == "due":
            return 1 if nbgrader(course, "db", "assignment", "add", names[0], f"--duedate={args.at}") else 0
        if not args.student or args.days is None:
            raise SystemExit("extend needs --student ID and --days N")
        extend(course, names[0], args.student, args.days)
        return 0
    if args.command == "reseed":
        if not args.term:
            raise SystemExit("reseed needs --term LABEL")
        reseed(course, names, args.term)
        return 0
    if args.command == "release":
        status = release(course, names)
    elif args.command in ("publish", "collect"):
        command = "release_assignment" if args.command == "publish" else "collect"
        for name in names:
            status |= nbgrader(course, command, name, *passed_on(args, command))
    elif args.command in ("autograde", "integrity"):
        for name in names:
            if args.command == "autograde":
                # nbgrader grades every student even if one submission breaks; its exit status then says so.
                status |= nbgrader(course, "autograde", name, *passed_on(args, "autograde"))
            findings = check_integrity(course, name)
            record_findings(course, name, findings)
            for f in findings:
                print(f"CHANGED {f.assignment} {f.student} {f.notebook} cell {f.cell!r}: {f.problem}; graded with "
                      f"the original, flagged for manual review")
        print_scores(course, names)
    elif args.command in ("feedback", "return"):
        command = "generate_feedback" if args.command == "feedback" else "release_feedback"
        for name in names:
            status |= nbgrader(course, command, name, *passed_on(args, command))
    elif args.command == "scores":
        if args.json:
            print(json.dumps(scores(course, names), indent=1, sort_keys=True))
        else:
            print_scores(course, names)
    return 1 if status else 0


if __name__ == "__main__":
    sys.exit(main())
