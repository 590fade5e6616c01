"""Shared by every test, notebooks included: tests run in the small `ci` profile unless LABKIT_PROFILE says otherwise."""

import os

os.environ.setdefault("LABKIT_PROFILE", "ci")
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # quiet the debugger warning at kernel start
os.environ.setdefault("MPLBACKEND", "Agg")
