"""The nbgrader course (course/): a release without answers, integrity checks, and grading end to end.

The slow test runs the whole term in a temporary copy of the course: generate and scan the release, put it in an
exchange, let students fetch and submit (a reference solution, an untouched release, and answers that raise, loop
forever, exhaust memory, edit a test cell or tamper with the names the tests use), collect, autograde, give feedback
and export grades, then checks every part's exact score.
"""

from __future__ import annotations

import csv
import datetime
import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from labkit import selfcheck

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "course.py"
COURSE_ID = "large-models"
GENERATED = ("release", "submitted", "autograded", "feedback", "gradebook.db", "*.csv", ".ipynb_checkpoints")



def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


course_tool = _load("course_tool", SCRIPT)
course_preprocessors = _load("course_preprocessors", ROOT / "course" / "course_preprocessors.py")


def nbgrader_meta(grade_id: str, *, grade: bool = False, solution: bool = False, locked: bool = False,
                  points: float | None = None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "solution": solution, "schema_version": 3}
    return {"nbgrader": meta if points is None else {**meta, "points": points}}


def small_release() -> nbformat.NotebookNode:
    return new_notebook(cells=[
        new_markdown_cell("# Title"),
        new_code_cell("import numpy as np", metadata=nbgrader_meta("setup", grade=True, locked=True, points=0)),
        new_code_cell("def f(x):\n    raise NotImplementedError()", metadata=nbgrader_meta("f", solution=True)),
        new_code_cell("assert f(1) == 2", metadata=nbgrader_meta("test_f", grade=True, locked=True, points=2)),
    ])


# ---- fast: the checks that nbgrader does not make ----------------------------------------------------------------


def test_integrity_accepts_answers_and_added_cells():
    release, submitted = small_release(), small_release()
    submitted.cells[2].source = "def f(x):\n    return x + 1"
    submitted.cells.append(new_code_cell("print(f(41))"))
    assert course_tool.check_notebook(release, submitted) == []


@pytest.mark.parametrize("change, expected", [
    (lambda nb: setattr(nb.cells[3], "source", "pass"), ("test_f", "edited")),
    (lambda nb: nb.cells.pop(3), ("test_f", "deleted (or its nbgrader metadata removed)")),
    (lambda nb: nb.cells[3].metadata.nbgrader.update(points=20),
     ("test_f", "nbgrader metadata changed (points, locked, grade or solution)")),
    (lambda nb: nb.cells.insert(1, new_code_cell("import numpy; numpy.allclose = lambda *a: True")),
     ("setup", "a code cell was put above it (graded after it)")),
    (lambda nb: nb.cells.insert(1, nb.cells.pop(3)), ("setup", "read-only cells moved out of their order")),
])
def test_integrity_reports_changed_read_only_cells(change, expected):
    release, submitted = small_release(), small_release()
    change(submitted)
    assert expected in course_tool.check_notebook(release, submitted)


def test_scan_finds_solution_and_hidden_test_lines(tmp_path):
    source = small_release()
    source.cells[2].source = "def f(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION"
    source.cells[3].source = "assert f(1) == 2\n### BEGIN HIDDEN TESTS\nassert f(41) == 42\n### END HIDDEN TESTS"
    leaky = small_release()
    leaky.cells[2].source = "def f(x):\n    return x + 1"
    leaky.cells[3].source = "assert f(1) == 2\nassert f(41) == 42  # kept by mistake"
    for name, nb in (("source.ipynb", source), ("leaky.ipynb", leaky), ("clean.ipynb", small_release())):
        nbformat.write(nb, tmp_path / name)
    problems = course_tool.scan_release(tmp_path / "source.ipynb", tmp_path / "leaky.ipynb")
    assert any("'return x + 1'" in p for p in problems) and any("'assert f(41) == 42'" in p for p in problems)
    assert course_tool.scan_release(tmp_path / "source.ipynb", tmp_path / "clean.ipynb") == []
    assert any("BEGIN SOLUTION" in p for p in course_tool.scan_release(tmp_path / "source.ipynb",
                                                                       tmp_path / "source.ipynb"))


def test_feedback_keeps_results_and_drops_hidden_code():
    nb = small_release()
    nb.cells[1].source = "import numpy as np\n### BEGIN HIDDEN TESTS\nrng = np.random.default_rng(20_250_902)\n" \
                         "_grade = make_grader(rng)\n### END HIDDEN TESTS"
    nb.cells[3].source = "assert f(1) == 2\n### BEGIN HIDDEN TESTS\nprint(_grade('f', f))\n### END HIDDEN TESTS"
    nb.cells[3].outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="f: visible check passed\n"),
        nbformat.v4.new_output("error", ename="AssertionError", evalue="f on B=3: wrong at index (0,)", traceback=[
            "\x1b[0;31m----------\x1b[0m",
            "Cell In[4], line 3\n\x1b[1;32m----> 3\x1b[0m print(_grade(\x1b[33m'f'\x1b[0m, f))",
            "File grading.py:120, in grade(part, fn)\n    assert False, message",
            "\x1b[0;31mAssertionError\x1b[0m: f on B=3: wrong at index (0,)"])]
    nb, _ = course_preprocessors.HideHiddenTests().preprocess(nb, {})
    text = json.dumps(nb)
    for secret in ("default_rng(20_250_902)", "make_grader", "_grade(", "HIDDEN TESTS"):
        assert secret not in text, secret
    assert nb.cells[1].source == "import numpy as np" and nb.cells[3].source == "assert f(1) == 2"
    assert "f: visible check passed" in text and "wrong at index (0,)" in text
    assert course_preprocessors.HIDDEN_NOTE in nb.cells[3].outputs[1].traceback


def test_options_go_anywhere_and_reach_nbgrader():
    args = course_tool.parse(["autograde", "--force", "ch02_backprop", "--student", "bob", "ch03_attention"])
    assert args.assignments == ["ch02_backprop", "ch03_attention"]
    assert course_tool.passed_on(args, "autograde") == ["--force", "--student=bob"]
    assert course_tool.passed_on(course_tool.parse(["collect", "--update", "ch02_backprop"]), "collect") == ["--update"]
    assert course_tool.passed_on(course_tool.parse(["publish", "ch02_backprop", "--force"]), "release_assignment") == \
        ["--force"]


def test_reseed_gives_each_term_its_own_hidden_inputs(tmp_path):
    course = tmp_path / "course"
    shutil.copytree(ROOT / "course" / "source", course / "source")
    first = course_tool.reseed(course, ["ch02_backprop", "ch03_attention"], "2026-spring")
    assert first == course_tool.reseed(course, ["ch02_backprop", "ch03_attention"], "2026-spring")
    second = course_tool.reseed(course, ["ch02_backprop"], "2026-autumn")
    assert second["ch02_backprop"] != first["ch02_backprop"] != first["ch03_attention"]
    nb = nbformat.read(course / "source" / "ch02_backprop" / "backprop.ipynb", as_version=4)
    assert f"default_rng({second['ch02_backprop']:_})" in nb.cells[1].source
    original = nbformat.read(ROOT / "course" / "source" / "ch02_backprop" / "backprop.ipynb", as_version=4)
    assert nb.cells[1].source.split("### BEGIN")[0] == original.cells[1].source.split("### BEGIN")[0]


def test_guide_names_nbgraders_default_exchange():
    from nbgrader.exchange.default.exchange import Exchange

    default = Exchange().root
    guide = (ROOT / "book" / "instructor_guide.md").read_text()
    assert default == "/usr/local/share/nbgrader/exchange" and default in guide
    assert "/srv/nbgrader/exchange" not in guide
    for config in ("nbgrader_config.py", "student_nbgrader_config.py"):
        text = (ROOT / "course" / config).read_text()
        assert "/srv/nbgrader" not in text


# ---- slow: a whole term -------------------------------------------------------------------------------------------

TAMPER_CH03 = '''
# Make every check pass, whatever my functions return.
import builtins
import numpy
import numpy.testing
import labkit.attention
import labkit.masks
import labkit.selfcheck

numpy.allclose = numpy.array_equal = lambda *args, **kwargs: True
numpy.testing.assert_allclose = numpy.testing.assert_array_equal = lambda *args, **kwargs: None
numpy.isfinite = lambda x: numpy.ones(numpy.shape(x), dtype=bool)
builtins.abs = lambda value: 0 * value
for name in dir(labkit.selfcheck):
    if name.startswith("check_"):
        setattr(labkit.selfcheck, name, lambda *args, **kwargs: "passed")
labkit.attention.attention_weights = lambda q, k, mask=None, **kwargs: attention_weights(q, k, mask=mask)
labkit.attention.dot_product_attention = lambda q, k, v, mask=None, **kwargs: attention(q, k, v, mask=mask)
labkit.masks.causal_mask = lambda t, *args, **kwargs: causal_mask(t)[None, None]
labkit.selfcheck.self_attention_reference = lambda x, params, n, **kwargs: causal_self_attention(x, params, n)
'''

TAMPER_CH04 = '''
import optax
import labkit.bpe
import labkit.optim
import labkit.selfcheck

labkit.bpe.BPETokenizer.train = classmethod(
    lambda cls, text, vocab_size, **kwargs: cls(train_bpe(text, vocab_size - 256)))
labkit.bpe._replace_pair = lambda ids, pair, new_id: merge(ids, pair, new_id)
optax.warmup_cosine_decay_schedule = lambda *args, **kwargs: (lambda step: args[1])
labkit.optim.make_schedule = lambda config: (lambda step: lr_schedule(
    step, peak_lr=config.learning_rate, warmup_steps=config.warmup_steps, total_steps=config.steps,
    final_lr=config.final_learning_rate))
labkit.selfcheck.schedule_reference = lambda step, **kwargs: lr_schedule(step, **kwargs)
for name in dir(labkit.selfcheck):
    if name.startswith("check_"):
        setattr(labkit.selfcheck, name, lambda *args, **kwargs: "passed")
'''

# Each submission: answers replaced ({cell: source}, the reference solution elsewhere, or the untouched release),
# read-only cells edited, a cell of the student's own inserted after a given cell.
SUBMISSIONS = {
    "ch02_backprop": {
        "reference": {},
        "untouched": None,
        # One bug: the derivative of tanh taken at a, not at h. train, which calls backward, must keep its points.
        "broken_backward": {"answers": {"backward": '''
def backward(params, x, y):
    a, h, z = forward(params, x)
    _, dz = softmax_cross_entropy(z, y)
    dh = dz @ params["W2"].T
    da = dh * (1.0 - a**2)
    return {"W1": x.T @ da, "b1": da.sum(axis=0), "W2": h.T @ dz, "b2": dz.sum(axis=0)}
'''}},
    },
    "ch03_attention": {
        "reference": {},
        "untouched": None,
        "raises": {"answers": {"causal_self_attention": '''
def causal_self_attention(x, params, num_heads):
    b, t, d, n = x.shape  # a bug: x has three axes
    return x
'''}},
        "loops": {"answers": {"causal_self_attention": '''
def causal_self_attention(x, params, num_heads):
    steps = 0
    while True:  # never ends
        steps += 1
'''}},
        "memory": {"answers": {"attention_weights": '''
def attention_weights(q, k, mask=None):
    cache = [np.ones((1024, 1024, 128)) for _ in range(8)]  # 8 GiB, "for speed"
    scores = jnp.einsum("btnh,bsnh->bnts", q, k) / jnp.sqrt(q.shape[-1])
    if mask is not None:
        scores = jnp.where(mask, scores, -1e30)
    weights = jnp.exp(scores - scores.max(axis=-1, keepdims=True))
    return weights / weights.sum(axis=-1, keepdims=True)
'''}},
        # One bug each: parts 3 and 4 call attention_weights, and must keep their points.
        "no_scale": {"answers": {"attention_weights": '''
def attention_weights(q, k, mask=None):
    scores = jnp.einsum("btnh,bsnh->bnts", q, k)
    if mask is not None:
        scores = jnp.where(mask, scores, -1e30)
    weights = jnp.exp(scores - scores.max(axis=-1, keepdims=True))
    return weights / weights.sum(axis=-1, keepdims=True)
'''}},
        "causal_only": {"answers": {"attention_weights": '''
def attention_weights(q, k, mask=None):
    scores = jnp.einsum("btnh,bsnh->bnts", q, k) / jnp.sqrt(q.shape[-1])
    if mask is not None:  # "the mask is always causal"
        scores = jnp.where(jnp.tril(jnp.ones(scores.shape[-2:], dtype=bool)), scores, -1e30)
    weights = jnp.exp(scores - scores.max(axis=-1, keepdims=True))
    return weights / weights.sum(axis=-1, keepdims=True)
'''}},
        "softmax": {"answers": {"attention_weights": '''
def attention_weights(q, k, mask=None):
    scores = jnp.einsum("btnh,bsnh->bnts", q, k) / jnp.sqrt(q.shape[-1])
    if mask is not None:
        scores = jnp.where(mask, scores, -1e30)
    return jax.nn.softmax(scores, axis=-1)
'''}, "insert": ("setup", "import jax")},
        "edits": {"answers": {"causal_mask": "def causal_mask(T):\n    return jnp.ones((T, T), dtype=bool)"},
                  "edit": {"test_causal_mask": 'print("causal_mask: all good")'}},
        "tamper": {"answers": {
            "attention_weights": '''
def attention_weights(q, k, mask=None):
    return jnp.zeros((q.shape[0], q.shape[2], q.shape[1], k.shape[1]))
''',
            "attention": "def attention(q, k, v, mask=None):\n    return jnp.zeros_like(q)",
            "causal_self_attention": "def causal_self_attention(x, params, num_heads):\n    return jnp.zeros_like(x)"},
            "insert": ("causal_mask", TAMPER_CH03)},
    },
    "ch04_bpe_schedule": {
        "reference": {},
        "untouched": None,
        "moved": {"insert": (None, 'print("my notes")')},
        "tamper": {"answers": {
            "train_bpe": "def train_bpe(text, num_merges):\n    return [(97, 97)] * num_merges",
            "lr_schedule": "def lr_schedule(step, *, peak_lr, warmup_steps, total_steps, final_lr):\n"
                           "    return peak_lr"},
            "insert": ("lr_schedule", TAMPER_CH04)},
    },
    "ch04_lora": {
        "reference": {},
        "untouched": None,
        # The update is not scaled by alpha / r; lora_step calls lora_forward, and is graded on labkit's.
        "unscaled": {"answers": {
            "lora_forward": "def lora_forward(x, W, b, A, B, alpha):\n    return x @ W + b + (x @ A) @ B"}},
    },
}

PARTS = {
    "ch02_backprop": {"test_forward": 2, "test_softmax_cross_entropy": 2, "test_backward": 4, "test_train": 2},
    "ch03_attention": {"test_causal_mask": 2, "test_attention_weights": 3, "test_attention": 2,
                       "test_causal_self_attention": 3},
    "ch04_bpe_schedule": {"test_pair_counts": 2, "test_merge": 2, "test_train_bpe": 3, "test_lr_schedule": 3},
    "ch04_lora": {"test_lora_forward": 2, "test_lora_merge": 2, "test_lora_param_count": 2, "test_lora_step": 4},
}
# The parts each submission loses; every other part earns full points.
LOST = {
    ("ch02_backprop", "untouched"): set(PARTS["ch02_backprop"]),
    ("ch02_backprop", "broken_backward"): {"test_backward"},
    ("ch03_attention", "untouched"): set(PARTS["ch03_attention"]),
    ("ch03_attention", "raises"): {"test_causal_self_attention"},
    ("ch03_attention", "loops"): {"test_causal_self_attention"},
    ("ch03_attention", "memory"): {"test_attention_weights"},
    ("ch03_attention", "no_scale"): {"test_attention_weights"},
    ("ch03_attention", "causal_only"): {"test_attention_weights"},
    ("ch03_attention", "softmax"): {"test_attention_weights"},
    ("ch03_attention", "edits"): {"test_causal_mask"},
    ("ch03_attention", "tamper"): {"test_attention_weights", "test_attention", "test_causal_self_attention"},
    ("ch04_bpe_schedule", "untouched"): set(PARTS["ch04_bpe_schedule"]),
    ("ch04_bpe_schedule", "tamper"): {"test_train_bpe", "test_lr_schedule"},
    ("ch04_lora", "untouched"): set(PARTS["ch04_lora"]),
    ("ch04_lora", "unscaled"): {"test_lora_forward"},
}


def expected_scores() -> dict[str, dict[str, dict[str, float]]]:
    out = {}
    for assignment, students in SUBMISSIONS.items():
        out[assignment] = {}
        for student in students:
            lost = LOST.get((assignment, student), set())
            out[assignment][student] = {cell: 0.0 if cell in lost else float(points)
                                        for cell, points in PARTS[assignment].items()}
    return out


def make_submission(release: nbformat.NotebookNode, source: nbformat.NotebookNode,
                    spec: dict | None) -> nbformat.NotebookNode:
    """The release with the source's solutions (or the given answers), edits and an inserted cell."""
    nb = nbformat.from_dict(json.loads(json.dumps(release)))
    if spec is None:
        return nb
    solutions = {c.metadata.nbgrader.grade_id: c.source for c in source.cells
                 if c.metadata.get("nbgrader", {}).get("solution")}
    answers = {**solutions, **{k: v.strip() for k, v in spec.get("answers", {}).items()}}
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = answers[grade_id]
        if grade_id in spec.get("edit", {}):
            cell.source = spec["edit"][grade_id]
    if "insert" in spec:  # after the cell `after`, or at the top if None
        after, code = spec["insert"]
        index = next((i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == after), -1)
        nb.cells.insert(index + 1, new_code_cell(code.strip()))
    return nb


def student_env(env: dict[str, str], home: Path) -> dict[str, str]:
    """The environment of one student: a home of their own, as on a real hub, so that nbgrader's per-user cache of
    submissions (``<Jupyter data folder>/nbgrader_cache``) is theirs alone; students who submit at the same moment
    never share (or race to create) it."""
    per_user = {"HOME": home, "JUPYTER_DATA_DIR": home / ".local/share/jupyter",
                "JUPYTER_RUNTIME_DIR": home / ".local/share/jupyter/runtime", "XDG_DATA_HOME": home / ".local/share",
                "XDG_CACHE_HOME": home / ".cache", "IPYTHONDIR": home / ".ipython"}
    for folder in per_user.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {**env, **{key: str(value) for key, value in per_user.items()}}


class Term:
    """A course directory, its exchange and students, and the commands that run it.

    Everything a term writes stays under ``work``: the teacher's home is ``work/teacher``, each student's is
    ``work/students/<name>``; nothing is read from or written to the home of the user who runs the tests.
    """

    def __init__(self, work: Path):
        self.work, self.course, self.exchange = work, work / "course", work / "exchange"
        shutil.copytree(ROOT / "course", self.course, ignore=shutil.ignore_patterns(*GENERATED))
        self.exchange.mkdir()
        self.exchange.chmod(0o777)
        # 90 s a cell: a setup cell that needs seconds on an idle machine took over 30 on a shared 2-core one (load
        # 16), and a timed-out setup cell fails the whole notebook; the looping submission costs these 90 s.
        self.env = student_env({**os.environ, "COURSE_EXCHANGE": str(self.exchange), "COURSE_CELL_TIMEOUT": "90",
                                "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                                         os.environ.get("PATH", "")])}, work / "teacher")
        self.seconds: dict[str, float] = {}  # command -> seconds, summed (commands run in parallel count each)
        self.log: list[str] = []
        self.lock = threading.Lock()

    def run(self, command: list[str], cwd: Path, label: str, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        start = time.monotonic()
        result = subprocess.run(command, cwd=cwd, env=env or self.env, capture_output=True, text=True)
        with self.lock:
            self.seconds[label] = self.seconds.get(label, 0.0) + time.monotonic() - start
            self.log.append(f"$ {' '.join(map(str, command))}\n{result.stdout}{result.stderr}")
        if check:
            assert result.returncode == 0, f"{label} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def teacher(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run([sys.executable, str(SCRIPT), *args, "--course", str(self.course)], ROOT, args[0], check)

    def student(self, student: str, *args: str) -> subprocess.CompletedProcess:
        home = self.work / "students" / student
        home.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "nbgrader", *args, f"--course={COURSE_ID}", f"--Exchange.root={self.exchange}"]
        return self.run(command, home, f"student {args[0]}", env=student_env(self.env, home))


def run_term(work: Path, submissions: dict[str, dict[str, dict | None]],
             before_submit: Callable[[Term], None] | None = None) -> Term:
    """A whole term in ``work``: release, publish, students fetch and submit at once, collect, grade, feed back.
    ``before_submit(term)`` runs after publishing (a roster, due dates, extensions)."""
    start = time.monotonic()
    term = Term(work)
    term.teacher("release", *submissions)
    term.teacher("publish", *submissions)
    if before_submit is not None:
        before_submit(term)
    for assignment, students in submissions.items():
        term.student("fetcher", "fetch_assignment", assignment)
        for nb_path in sorted((term.course / "release" / assignment).glob("*.ipynb")):
            fetched = nbformat.read(term.work / "students" / "fetcher" / assignment / nb_path.name, as_version=4)
            source = nbformat.read(term.course / "source" / assignment / nb_path.name, as_version=4)
            for student, spec in students.items():
                folder = term.work / "students" / student / assignment
                folder.mkdir(parents=True, exist_ok=True)
                nbformat.write(make_submission(fetched, source, spec), folder / nb_path.name)
        with ThreadPoolExecutor(max_workers=4) as pool:  # students submit at the same time
            list(pool.map(lambda student, assignment=assignment:
                          term.student(student, "submit", assignment, f"--student={student}"), students))
    term.teacher("collect", *submissions)
    term.teacher("autograde", *submissions)
    term.teacher("feedback", *submissions)
    term.teacher("return", *submissions)
    term.teacher("export")
    term.scores = json.loads(term.teacher("scores", *submissions, "--json").stdout)
    term.seconds["total"] = time.monotonic() - start
    print("seconds per step:", {k: round(v, 1) for k, v in term.seconds.items()})
    return term


@pytest.fixture(scope="module")
def term(tmp_path_factory) -> Term:
    return run_term(tmp_path_factory.mktemp("term"), SUBMISSIONS)


@pytest.mark.slow
def test_release_has_no_solutions_or_hidden_tests(term):
    for source_nb in sorted((term.course / "source").glob("*/*.ipynb")):
        release_nb = term.course / "release" / source_nb.parent.name / source_nb.name
        assert course_tool.scan_release(source_nb, release_nb) == []
        text = release_nb.read_text()
        assert "_grade(" not in text and "sealed_grader" not in text and "NotImplementedError" in text
    # What students fetched from the exchange is the release itself.
    fetched = term.work / "students" / "fetcher" / "ch03_attention" / "attention.ipynb"
    assert fetched.read_text() == (term.course / "release" / "ch03_attention" / "attention.ipynb").read_text()


@pytest.mark.slow
def test_every_part_has_its_exact_score(term):
    got = {assignment: {student: result["parts"] for student, result in students.items()}
           for assignment, students in term.scores.items()}
    assert got == expected_scores()
    for assignment, students in term.scores.items():
        for student, result in students.items():
            assert result["total"] == sum(expected_scores()[assignment][student].values())


@pytest.mark.slow
def test_edited_test_cell_is_detected_and_flagged(term):
    with open(term.course / "integrity.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"assignment": "ch03_attention", "student": "edits", "notebook": "attention",
                     "cell": "test_causal_mask", "problem": "edited"},
                    {"assignment": "ch04_bpe_schedule", "student": "moved", "notebook": "bpe_schedule",
                     "cell": "setup", "problem": "a code cell was put above it (graded after it)"}]
    flagged = {(a, s): r["flagged"] for a, students in term.scores.items() for s, r in students.items() if r["flagged"]}
    assert flagged == {("ch03_attention", "edits"): ["test_causal_mask"], ("ch04_bpe_schedule", "moved"): ["setup"]}
    # nbgrader graded the original test, not the edited one.
    autograded = nbformat.read(term.course / "autograded" / "edits" / "ch03_attention" / "attention.ipynb", 4)
    cell = next(c for c in autograded.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "test_causal_mask")
    assert "check_causal_mask" in cell.source and "all good" not in cell.source


@pytest.mark.slow
def test_failures_are_specific(term):
    def outputs(student: str, cell_id: str) -> str:
        nb = nbformat.read(term.course / "autograded" / student / "ch03_attention" / "attention.ipynb", 4)
        cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == cell_id)
        return " ".join(json.dumps(cell.outputs).replace("\\n", " ").split())  # hints are wrapped at 80 columns

    assert "MemoryError" in outputs("memory", "test_attention_weights")  # the limit, not the machine, stopped it
    assert "CellTimeoutError" in outputs("loops", "test_causal_self_attention") or \
        "KeyboardInterrupt" in outputs("loops", "test_causal_self_attention")
    assert "ValueError" in outputs("raises", "test_causal_self_attention")
    assert "future positions are attended" in outputs("edits", "test_causal_mask")
    assert "masked keys are attended" in outputs("causal_only", "test_attention_weights")  # a visible check finds it
    assert "check_attention_weights: it uses softmax" in outputs("softmax", "test_attention_weights")  # a rule
    assert "the update is not scaled" in " ".join(json.dumps(next(
        c.outputs for c in nbformat.read(term.course / "autograded" / "unscaled" / "ch04_lora" / "lora.ipynb", 4).cells
        if c.metadata.get("nbgrader", {}).get("grade_id") == "test_lora_forward")).replace("\\n", " ").split())
    # The time each step took is printed by the fixture (seconds per step), not asserted: on a shared machine a
    # time limit in a test fails for reasons that are not the code's. A looping cell is stopped by the cell timeout.


@pytest.mark.slow
def test_grades_reach_the_csv_and_feedback_is_returned(term):
    with open(term.course / "grades.csv", newline="") as f:
        rows = {(r["assignment"], r["student_id"]): float(r["score"]) for r in csv.DictReader(f)}
    submitted = {(a, s): sum(parts.values()) for a, students in expected_scores().items() for s, parts in
                 students.items()}
    everyone = {s for a, s in submitted}  # nbgrader lists every student for every assignment, 0 if not submitted
    assert rows == {(a, s): submitted.get((a, s), 0.0) for a in SUBMISSIONS for s in everyone}
    for (assignment, student) in submitted:
        notebook = next((term.course / "source" / assignment).glob("*.ipynb")).stem
        assert (term.course / "feedback" / student / assignment / f"{notebook}.html").exists()
    returned = list((term.exchange / COURSE_ID / "feedback").glob("*.html"))
    assert len(returned) == len(submitted)


def visible_text(path: Path) -> str:
    """What a browser shows of an HTML file: tags dropped, entities decoded (highlighted code becomes plain again)."""
    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text()))


@pytest.mark.slow
def test_feedback_shows_results_but_no_hidden_test(term):
    secret = {}
    for source_nb in sorted((term.course / "source").glob("*/*.ipynb")):
        lines = course_preprocessors.hidden_lines(nbformat.read(source_nb, as_version=4))
        secret[source_nb.parent.name] = {line for line in lines if len(line) >= 12}
        assert any("default_rng(" in line for line in secret[source_nb.parent.name])  # the seed is among them
    returned = list((term.exchange / COURSE_ID / "feedback").glob("*.html"))
    everything = set().union(*secret.values())
    for path in [*term.course.glob("feedback/*/*/*.html"), *returned]:
        text = visible_text(path)
        leaked = sorted(line for line in everything if line in text)
        assert not leaked, f"{path} shows hidden test code: {leaked[:3]}"
        assert "_hidden_grader" not in text and "sealed_grader" not in text
    # The results are there: every part's hidden message for the reference, the failing part's message otherwise.
    reference = visible_text(term.course / "feedback" / "reference" / "ch03_attention" / "attention.html")
    for part in ("causal_mask", "attention_weights", "attention", "causal_self_attention"):
        assert f"{part}: hidden cases passed" in reference
    no_scale = visible_text(term.course / "feedback" / "no_scale" / "ch03_attention" / "attention.html")
    no_scale = " ".join(no_scale.split())
    assert "without the scale" in no_scale


@pytest.mark.slow
def test_validate_shows_whole_hints_with_the_students_config(term):
    """A student with the course's student configuration validates a notebook whose attention assumes a causal mask:
    the padding-mask check fails, and validate prints the whole hint, not a line cut at 90 characters."""
    home = term.work / "students" / "causal_only"
    (home / ".jupyter").mkdir(exist_ok=True)
    shutil.copy(ROOT / "course" / "student_nbgrader_config.py", home / ".jupyter" / "nbgrader_config.py")
    env = {**student_env(term.env, home), "JUPYTER_CONFIG_DIR": str(home / ".jupyter")}
    env.pop("COURSE_EXCHANGE")
    result = term.run([sys.executable, "-m", "nbgrader", "validate", "ch03_attention/attention.ipynb"], home,
                      "student validate", check=False, env=env)
    namespace = {"jnp": __import__("jax.numpy", fromlist=["numpy"])}
    exec(SUBMISSIONS["ch03_attention"]["causal_only"]["answers"]["attention_weights"], namespace)
    with pytest.raises(AssertionError) as hint:
        selfcheck.check_attention_weights(namespace["attention_weights"])
    shown = " ".join(result.stdout.split())
    assert " ".join(str(hint.value).split()) in shown, result.stdout
    assert "masked keys are attended" in shown


LATE_TERM = {"ch04_lora": {"ontime": {}, "late": {}}}


@pytest.mark.slow
def test_roster_due_date_extension_late_penalty_resubmission_and_regrade(tmp_path):
    """The workflow of a real term on one assignment: a roster, a due date an hour ago, an extension for one student,
    a late penalty for the other, a student who never submits, the export, a re-release, a resubmission and a
    regrade of one student; and a teacher whose ~/.jupyter/nbgrader_config.py only names the course root."""
    roster = tmp_path / "roster.csv"
    roster.write_text("id,first_name,last_name,email\nontime,Ada,Lovelace,ada@example.org\n"
                      "late,Alan,Turing,alan@example.org\nabsent,Grace,Hopper,grace@example.org\n")
    due = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S UTC")

    def before_submit(term: Term) -> None:
        term.teacher("roster", "--file", str(roster))
        term.teacher("due", "ch04_lora", "--at", due)
        term.teacher("extend", "--student", "ontime", "ch04_lora", "--days", "2")

    term = run_term(tmp_path / "term", LATE_TERM, before_submit)
    with open(term.course / "grades.csv", newline="") as f:
        rows = {r["student_id"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"ontime", "late", "absent"}
    assert (rows["absent"]["status"], float(rows["absent"]["score"]), rows["absent"]["email"]) == \
        ("missing", 0.0, "grace@example.org")
    assert (rows["ontime"]["status"], float(rows["ontime"]["score"])) == ("on time", 10.0)
    assert rows["late"]["status"] == "late" and rows["late"]["first_name"] == "Alan"
    assert (float(rows["late"]["raw_score"]), float(rows["late"]["late_penalty"]), float(rows["late"]["score"])) == \
        (10.0, 1.0, 9.0)  # 10% of the score per started day late (COURSE_LATE_PERCENT_PER_DAY)
    # Re-release a fixed assignment, accept a resubmission, regrade one student.
    term.teacher("release", "ch04_lora")
    term.teacher("publish", "--force", "ch04_lora")
    term.student("late", "submit", "ch04_lora", "--student=late")
    term.teacher("collect", "ch04_lora", "--update")
    regrade = term.teacher("autograde", "ch04_lora", "--force", "--student", "late")
    assert "ch04_lora late: 10" in regrade.stdout
    term.teacher("feedback", "--force", "--student", "late", "ch04_lora")
    # A teacher's own config that only names the course root: nbgrader then reads course/nbgrader_config.py itself.
    home = term.work / "teacher"
    (home / ".jupyter").mkdir(parents=True, exist_ok=True)
    (home / ".jupyter" / "nbgrader_config.py").write_text(
        f"c = get_config()\nc.CourseDirectory.root = {str(term.course)!r}\n")
    env = {**term.env, "JUPYTER_CONFIG_DIR": str(home / ".jupyter")}
    env.pop("COURSE_EXCHANGE")
    listed = term.run([sys.executable, "-m", "nbgrader", "db", "assignment", "list"], home, "teacher list", env=env)
    assert "ch04_lora" in listed.stdout + listed.stderr


# ---- nothing outside the term's folder ----------------------------------------------------------------------------


def test_tests_do_not_use_the_real_home():
    real = Path(os.environ["LABKIT_TEST_REAL_HOME"]).resolve()
    assert Path.home().resolve() != real
    for variable in ("JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "MPLCONFIGDIR",
                     "XDG_CACHE_HOME", "LABKIT_CACHE"):
        assert real not in Path(os.environ[variable]).resolve().parents, variable
    from jupyter_core.paths import jupyter_data_dir
    assert Path(jupyter_data_dir()).resolve().is_relative_to(Path.home().resolve())


@pytest.mark.slow
def test_a_second_term_in_the_same_session_starts_clean(term, tmp_path):
    """Run a small term again, in a new folder, after the module's term: the same scores, so no state (nbgrader's
    submission cache, the exchange, the gradebook) is carried from one run to the next; and every student's
    submission cache lies in that student's own home."""
    small = {"ch04_lora": {name: SUBMISSIONS["ch04_lora"][name] for name in ("reference", "untouched", "unscaled")}}
    again = run_term(tmp_path, small)
    assert again.scores == {"ch04_lora": {s: term.scores["ch04_lora"][s] for s in small["ch04_lora"]}}
    for student in small["ch04_lora"]:
        cache = tmp_path / "students" / student / ".local/share/jupyter/nbgrader_cache" / COURSE_ID
        assert len(list(cache.iterdir())) == 1, f"{student}'s submission is not in their own nbgrader cache"
