"""Input checks shared by labkit's public functions, so that each kind of bad input gets the same clear message.

>>> check_int("batch_size", 32)
32
>>> check_int("k", 0, maximum=10)
Traceback (most recent call last):
ValueError: k must be an int in [1, 10]; got 0
"""

from __future__ import annotations

from typing import Any

import numpy as np


def check_int(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as an int, or a ValueError naming ``name``, the range expected and the value that came.

    A bool is not an int here (``True`` as a batch size is a mistake); NumPy integers are accepted.
    """
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok or value < minimum or (maximum is not None and value > maximum):
        if maximum is not None:
            expected = f"an int in [{minimum}, {maximum}]"
        else:
            expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {expected}; got {value!r}")
    return int(value)
