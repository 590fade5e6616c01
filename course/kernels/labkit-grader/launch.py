"""Start an IPython kernel under a memory limit: nbgrader runs each student's notebook in it when grading.

The limit is COURSE_MEMORY_GB gibibytes (default 2) of RLIMIT_DATA, the private writable memory the process may map
(Linux 4.7 and later count every such mapping, not only the heap). Past it, NumPy raises MemoryError and JAX raises
RESOURCE_EXHAUSTED in the cell that asked: that cell fails, the kernel lives on, and the other cells are still
graded. RLIMIT_AS, the whole address space, would be a poor measure here: XLA reserves address space it never uses,
in proportion to the number of CPU threads, so a limit that suits one machine kills JAX on another.
"""

import os
import resource
import sys


def main() -> None:
    limit = int(float(os.environ.get("COURSE_MEMORY_GB", "2")) * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))  # soft = hard: the notebook cannot raise it again
    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.launch_instance(argv=[*sys.argv[1:], "--HistoryManager.hist_file=:memory:"])


if __name__ == "__main__":
    main()
