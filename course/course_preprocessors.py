"""nbgrader preprocessors and plugins of this course, named in nbgrader_config.py: the setup cell first when grading,
feedback that shows each part's result and message but none of the hidden tests, and a late penalty per day."""

from __future__ import annotations

import math
import re
from typing import Any, Iterator

from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Float

BEGIN, END = "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"
HIDDEN_NOTE = "(the hidden tests' code is not shown)"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class SetupCellFirst(NbGraderPreprocessor):
    """Grade with the setup cell first, even if a student put cells above it: the hidden tests' references are
    built there, before any student code runs (scripts/course.py reports the move)."""

    def preprocess(self, nb, resources):
        setup = [cell for cell in nb.cells if cell.metadata.get("nbgrader", {}).get("grade_id") == "setup"][:1]
        nb.cells = setup + [cell for cell in nb.cells if cell not in setup]
        return nb, resources


def _regions(source: str) -> Iterator[tuple[bool, str]]:
    """(inside a hidden-test region, line) for each line of a cell; the delimiter lines count as inside."""
    inside = False
    for line in source.splitlines():
        if BEGIN in line:
            inside = True
            yield True, line
        elif END in line:
            inside = False
            yield True, line
        else:
            yield inside, line


def hidden_lines(nb: Any) -> set[str]:
    """The stripped lines that occur inside a hidden-test region of some cell and in no visible part of any cell."""
    hidden, shown = set(), set()
    for cell in nb.cells:
        if cell.cell_type == "code":
            for inside, line in _regions(cell.source):
                (hidden if inside else shown).add(line.strip())
    return hidden - shown - {""}


def _reveals(text: str, secret: set[str]) -> bool:
    plain = _ANSI.sub("", text)
    lines = {line.strip() for line in plain.splitlines()}
    return any(line in lines or (len(line) >= 8 and line in plain) for line in secret)


# Frames inside the grader's own machinery: public code, but they show how the hidden cases are run and tell a
# student nothing about their bug (the error's message, kept, does).
GRADER_FRAMES = ("labkit/grading.py", "sealed_grader", "_hidden_grader")


def _clean(output: Any, secret: set[str]) -> Any:
    """The output with every traceback frame or text line that shows hidden code removed."""
    if output.output_type == "error":
        frames = [frame for frame in output.traceback
                  if not _reveals(frame, secret) and not any(m in _ANSI.sub("", frame) for m in GRADER_FRAMES)]
        if len(frames) < len(output.traceback):
            frames.insert(len(frames) - 1 if frames else 0, HIDDEN_NOTE)
        output.traceback = frames or [f"{output.ename}: {output.evalue}"]
    elif output.output_type == "stream":
        output.text = "".join(line for line in output.text.splitlines(True) if not _reveals(line, secret))
    elif "data" in output and "text/plain" in output.data:
        if _reveals(output.data["text/plain"], secret):
            output.data = {"text/plain": HIDDEN_NOTE}
    return output


class HideHiddenTests(NbGraderPreprocessor):
    """For feedback: remove the hidden-test regions (the setup cell's grader and seeds, each test's hidden lines)
    from the cells, and every traceback frame or printed line that would show one of their lines. The results stay:
    each part's score, its printed messages and the message of the error that failed it."""

    def preprocess(self, nb, resources):
        secret = hidden_lines(nb)
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            cell.source = "\n".join(line for inside, line in _regions(cell.source) if not inside).rstrip()
            cell.outputs = [_clean(output, secret) for output in cell.get("outputs", [])]
        return nb, resources


def _late_plugin_base() -> type:
    from nbgrader.plugins import LateSubmissionPlugin

    return LateSubmissionPlugin


class LatePenaltyPerDay(_late_plugin_base()):
    """A late notebook loses ``percent_per_day`` percent of its score for each day, or part of a day, past the due
    date (the student's extension included); never more than its score. 0 turns penalties off."""

    percent_per_day = Float(10.0, help="Percent of the score lost per started day late").tag(config=True)

    def late_submission_penalty(self, student_id: str, score: float, total_seconds_late: float) -> float:
        percent = self.percent_per_day
        days = math.ceil(total_seconds_late / 86400)
        penalty = min(score, score * percent / 100 * days)
        self.log.warning("%s is %d day(s) late: penalty %.3g of %.3g points", student_id, days, penalty, score)
        return penalty
