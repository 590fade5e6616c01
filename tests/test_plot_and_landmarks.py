import matplotlib

matplotlib.use("Agg")
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from labkit import landmarks, plot  # noqa: E402
from labkit.train import History  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def test_plot_history_and_errors():
    history = History(step=[1, 2, 3], loss=[3.0, 2.0, 1.0], eval_step=[3], eval={"accuracy": [0.5]})
    ax = plot.plot_history(history, smooth=1)
    assert len(ax.lines) == 1
    assert len(plot.plot_history(history, metric="accuracy").lines) == 1
    with pytest.raises(ValueError, match="metric 'f1' was not recorded"):
        plot.plot_history(history, metric="f1")
    with pytest.raises(ValueError, match="history is empty"):
        plot.plot_history(History())


def test_confusion_counts():
    ax = plot.plot_confusion(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]))
    image = ax.images[0].get_array()
    np.testing.assert_array_equal(image, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])
    with pytest.raises(ValueError, match="equal-length"):
        plot.plot_confusion(np.array([0, 1]), np.array([0]))


def test_show_images_validates():
    fig = plot.show_images(np.zeros((3, 8, 8)), ncols=2)
    assert len(fig.axes) == 4
    with pytest.raises(ValueError, match="\\(n, height, width\\)"):
        plot.show_images(np.zeros((8, 8)))


def test_every_landmark_source_is_in_the_bibliography():
    keys = set(re.findall(r"@\w+\{([^,]+),", (REPO / "references.bib").read_text()))
    used = {m.source for m in landmarks.LANDMARKS} | {m.source for m in landmarks.TIMELINE}
    assert used <= keys, used - keys


def test_reported_compute_agrees_with_six_n_d_where_both_are_published():
    both = [m for m in landmarks.LANDMARKS if m.compute and m.tokens]
    assert both
    for m in both:
        assert abs(6 * m.parameters * m.tokens / m.compute - 1) < 0.1, m.name


def test_glue_works_without_myst_nb(monkeypatch, capsys):
    import sys

    from labkit.book import glue

    monkeypatch.setitem(sys.modules, "myst_nb", None)  # as on Colab, where myst-nb is not installed
    assert glue("x", 1.5, display=False) is None
    with pytest.raises(ValueError, match="name must be a non-empty str"):
        glue("", 1.0)


def test_glue_stores_numpy_scalars_as_python_numbers(monkeypatch):
    import sys
    import types

    from labkit.book import glue

    stored = {}
    fake = types.SimpleNamespace(glue=lambda name, value, display: stored.setdefault(name, value))
    monkeypatch.setitem(sys.modules, "myst_nb", fake)
    glue("a", np.float64(0.25), display=False)
    glue("b", np.asarray(3), display=False)
    glue("c", np.arange(2), display=False)  # arrays stay arrays
    assert type(stored["a"]) is float and type(stored["b"]) is int and isinstance(stored["c"], np.ndarray)
