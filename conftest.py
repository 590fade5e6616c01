"""Shared by every test, notebooks included: tests run in the small `ci` profile unless LABKIT_PROFILE says otherwise.

Tests never read or write the user's home: HOME and every per-user folder the tools use (Jupyter's config, data and
runtime folders, IPython's, matplotlib's, the XDG caches, labkit's model cache) point into one temporary folder made
for this test session. Subprocesses (notebook kernels started by nbval, nbgrader, the book build) inherit them. A
machine whose home has never run the project therefore tests exactly like one that has, and the user's own settings
(say a ~/.jupyter/nbgrader_config.py) cannot change a result.
"""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("LABKIT_PROFILE", "ci")
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # quiet the debugger warning at kernel start
os.environ.setdefault("MPLBACKEND", "Agg")
# Every subprocess (notebook kernels, nbgrader, the book build, JupyterLab) imports this checkout's labkit, whichever
# checkout the environment's editable install points at (two checkouts may share one environment).
REPO = Path(__file__).resolve().parent
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])

REAL_HOME = os.environ.get("LABKIT_TEST_REAL_HOME") or os.path.expanduser("~")
os.environ["LABKIT_TEST_REAL_HOME"] = REAL_HOME  # kept for the test that checks nothing points there
TEST_HOME = Path(tempfile.mkdtemp(prefix="labkit-test-home-"))
os.environ["HOME"] = str(TEST_HOME)
for variable, folder in {
    "XDG_CACHE_HOME": ".cache", "XDG_CONFIG_HOME": ".config", "XDG_DATA_HOME": ".local/share",
    "JUPYTER_CONFIG_DIR": ".jupyter", "JUPYTER_DATA_DIR": ".local/share/jupyter",
    "JUPYTER_RUNTIME_DIR": ".local/share/jupyter/runtime", "IPYTHONDIR": ".ipython",
    "MPLCONFIGDIR": ".config/matplotlib",
    # Pretrained models (labkit.zoo) are cached per test session: a test run starts from nothing, and notebook
    # kernels inherit the variable, so they share the session's cache.
    "LABKIT_CACHE": ".cache/labkit",
}.items():
    (TEST_HOME / folder).mkdir(parents=True, exist_ok=True)
    os.environ[variable] = str(TEST_HOME / folder)
