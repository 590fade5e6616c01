"""Shared by every test, notebooks included: tests run in the small `ci` profile unless LABKIT_PROFILE says otherwise."""

import os
import tempfile

os.environ.setdefault("LABKIT_PROFILE", "ci")
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # quiet the debugger warning at kernel start
os.environ.setdefault("MPLBACKEND", "Agg")
# Pretrained models (labkit.zoo) are cached per test session, not in the user's ~/.cache/labkit: a test run starts
# from nothing, and notebook kernels started by nbval inherit the variable, so they share the session's cache.
os.environ.setdefault("LABKIT_CACHE", tempfile.mkdtemp(prefix="labkit-test-cache-"))
