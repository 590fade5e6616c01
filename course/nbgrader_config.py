"""nbgrader's settings for this course. Run nbgrader in this directory, or use scripts/course.py from the repository.

Four knobs come from the environment, so that a teacher can change them without editing this file:
COURSE_EXCHANGE (the exchange directory shared by teacher and students, default nbgrader's own,
/usr/local/share/nbgrader/exchange),
COURSE_CELL_TIMEOUT (seconds one cell may run when grading, default 60), COURSE_MEMORY_GB (memory for one student's
notebook when grading, default 2) and COURSE_LATE_PERCENT_PER_DAY (the late penalty: percent of a late notebook's
score lost per started day past the due date and any extension, default 10; 0 for none). See
book/instructor_guide.md.
"""

import os
import sys
from pathlib import Path

from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import (CheckCellMetadata, ClearOutput, DeduplicateIds, GetGrades, OverwriteCells,
                                    OverwriteKernelspec)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from course_preprocessors import HideHiddenTests, LatePenaltyPerDay, SetupCellFirst  # noqa: E402 (on the path now)

c = get_config()  # noqa: F821 (nbgrader defines get_config when it reads this file)

c.CourseDirectory.course_id = "large-models"
c.CourseDirectory.root = str(HERE)
if os.environ.get("COURSE_EXCHANGE"):
    c.Exchange.root = os.environ["COURSE_EXCHANGE"]

# Grade every notebook in the kernel of kernels/labkit-grader: a Python kernel under a memory limit, on the CPU.
# Jupyter finds kernels in <dir>/kernels for each <dir> on JUPYTER_PATH.
os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("JUPYTER_PATH")]))
os.environ.setdefault("COURSE_MEMORY_GB", "2")
c.Execute.kernel_name = "labkit-grader"
# A cell that runs longer is interrupted and fails; the cells after it still run. Each cell needs seconds.
c.Execute.timeout = int(os.environ.get("COURSE_CELL_TIMEOUT", "60"))
# nbgrader fails a notebook whose kernel sends no output for 4 seconds after a cell finished (nbclient's default
# iopub_timeout); on a busy grading machine that happens to correct notebooks, so wait as long as a cell may run.
c.Execute.iopub_timeout = c.Execute.timeout

# `nbgrader validate` cuts every line of an error at this width (default 90): the self-checks' hints, wrapped at 80,
# stay whole (course/student_nbgrader_config.py sets the same for students).
c.Validator.width = 120

# A test cell a student deleted is put back, so that it fails or passes like any other, instead of being skipped.
c.OverwriteCells.add_missing_cells = True

# nbgrader's own list, with SetupCellFirst after OverwriteCells (which restores the setup cell if it was deleted).
c.Autograde.sanitize_preprocessors = [ClearOutput, DeduplicateIds, OverwriteKernelspec, OverwriteCells,
                                      SetupCellFirst, CheckCellMetadata]

# Feedback shows each part's score and messages, never the hidden tests: nbgrader's own list (GetGrades, then the
# HTML header) with HideHiddenTests between them. nbgrader 0.9.6 has no setting for this; without it, the feedback
# would show the setup cell's hidden grader, seeds included, and every hidden test line.
c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]

# Late work: nbgrader compares each submission's time with the assignment's due date (`scripts/course.py due`) plus
# the student's extension (`scripts/course.py extend`); LatePenaltyPerDay sets the penalty, which the gradebook,
# the feedback and `scripts/course.py export` subtract from the score.
c.AssignLatePenalties.plugin_class = LatePenaltyPerDay
c.LatePenaltyPerDay.percent_per_day = float(os.environ.get("COURSE_LATE_PERCENT_PER_DAY", "10"))
