"""Links between a notebook and the book's text: ``glue`` a number or figure so that a chapter page can show it.

Inside the book build this is myst-nb's ``glue``; where myst-nb is not installed (Colab, a bare install of labkit)
it only displays the value, so the same notebook runs everywhere.

>>> glue("ch02_test_accuracy", 0.978, display=False)
"""

from __future__ import annotations

from typing import Any

import numpy as np


def glue(name: str, value: Any, display: bool = True) -> None:
    """Record ``value`` under ``name`` for the book's {glue} roles; show it too if ``display``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str; got {name!r}")
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        # A NumPy scalar is glued as its repr ("np.float64(0.5)"), which {glue:text} with a format spec cannot
        # read as a number; a Python number can be formatted.
        value = value.item()
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        if display:
            from IPython.display import display as show

            show(value)
        return
    myst_glue(name, value, display=display)
