"""nbgrader's settings for this course. Run nbgrader in this directory, or use scripts/course.py from the repository.

Three knobs come from the environment, so that a teacher can change them without editing this file:
COURSE_EXCHANGE (the exchange directory shared by teacher and students, default nbgrader's /srv/nbgrader/exchange),
COURSE_CELL_TIMEOUT (seconds one cell may run when grading, default 60) and COURSE_MEMORY_GB (memory for one
student's notebook when grading, default 2). See book/instructor_guide.md.
"""

import os
from pathlib import Path

from nbgrader.preprocessors import (CheckCellMetadata, ClearOutput, DeduplicateIds, NbGraderPreprocessor,
                                    OverwriteCells, OverwriteKernelspec)

HERE = Path(__file__).resolve().parent

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

# A test cell a student deleted is put back, so that it fails or passes like any other, instead of being skipped.
c.OverwriteCells.add_missing_cells = True


class SetupCellFirst(NbGraderPreprocessor):
    """Grade with the setup cell first, even if a student put cells above it: the hidden tests' references are
    built there, before any student code runs (scripts/course.py reports the move)."""

    def preprocess(self, nb, resources):
        setup = [cell for cell in nb.cells if cell.metadata.get("nbgrader", {}).get("grade_id") == "setup"][:1]
        nb.cells = setup + [cell for cell in nb.cells if cell not in setup]
        return nb, resources


# nbgrader's own list, with SetupCellFirst after OverwriteCells (which restores the setup cell if it was deleted).
c.Autograde.sanitize_preprocessors = [ClearOutput, DeduplicateIds, OverwriteKernelspec, OverwriteCells,
                                      SetupCellFirst, CheckCellMetadata]
