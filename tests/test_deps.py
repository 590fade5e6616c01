"""labkit.deps: the one dependency tracker (book build, zoo) and the code digest that ignores prose."""

import textwrap
from pathlib import Path

import pytest

from labkit import deps


def _package(root: Path, files: dict[str, str]) -> Path:
    """A tiny package ``kit`` under ``root``: {relative path: source}."""
    package = root / "kit"
    for rel, source in files.items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return package


@pytest.fixture
def kit(tmp_path: Path) -> Path:
    return _package(tmp_path, {
        "__init__.py": '"""The catalogue."""\nfrom kit.base import helper\nVERSION = "1"\n',
        "base.py": "def helper():\n    return 1\n",
        "leaf.py": "X = 1\n",
        "unused.py": "from kit import leaf\n",
        "fam/__init__.py": "from .core import run\n",
        "fam/core.py": "from ..base import helper\nfrom . import extra\n\ndef run():\n    return helper()\n",
        "fam/extra.py": "from kit.leaf import X\n",
    })


def test_plain_and_package_imports(kit):
    assert deps.modules_in("from kit import leaf", root=kit) == {"kit", "kit.leaf"}
    assert deps.modules_in("import kit.fam.core", root=kit) == {"kit.fam.core"}
    assert deps.modules_in("from kit.fam import run", root=kit) == {"kit.fam"}
    assert deps.modules_in("from kit.fam import extra", root=kit) == {"kit.fam", "kit.fam.extra"}
    assert deps.modules_in("from kit import fam\nfam.extra.f()", root=kit) == {"kit", "kit.fam", "kit.fam.extra"}


def test_closure_follows_packages_and_relative_imports(kit):
    assert deps.closure(["kit.fam.core"], root=kit) == [
        "kit", "kit.base", "kit.fam", "kit.fam.core", "kit.fam.extra", "kit.leaf"]
    assert "kit.unused" not in deps.closure(deps.modules_in("import kit", root=kit), root=kit)


def test_names_the_package_init_binds_are_attributes_not_modules(kit):
    assert deps.modules_in("from kit import helper, VERSION", root=kit) == {"kit"}
    assert deps.modules_in("import kit\nkit.helper()\nkit.leaf.X", root=kit) == {"kit", "kit.leaf"}
    assert deps.modules_in("import kit as k\nk.VERSION", root=kit) == {"kit"}


@pytest.mark.parametrize("code, name", [
    ("from kit import nothing", "kit.nothing"),
    ("import kit.nothing", "kit.nothing"),
    ("from kit.nothing import x", "kit.nothing"),
    ("from kit.fam import nothing", "kit.fam.nothing"),
    ("import kit\nkit.nothing", "kit.nothing"),
    ("%pip install kit\nfrom kit import fam\nfam.nothing", "kit.fam.nothing"),
])
def test_an_unresolvable_import_fails_loudly_naming_it_and_the_file(kit, code, name):
    with pytest.raises(deps.DependencyError, match=rf"notebooks/x\.ipynb, line \d+: {name} ") as error:
        deps.modules_in(code, root=kit, origin="notebooks/x.ipynb")
    assert "cannot be known" in str(error.value)


def test_an_unresolvable_import_inside_the_package_names_its_file(tmp_path):
    package = _package(tmp_path, {"__init__.py": "", "a.py": "from . import b\n", "b.py": "from .missing import y\n"})
    with pytest.raises(deps.DependencyError, match=r"kit/b\.py, line 1: kit\.missing is not a module"):
        deps.closure(["kit.a"], root=package)
    with pytest.raises(deps.DependencyError, match="kit.gone is not a module"):
        deps.closure(["kit.gone"], root=package)


def test_relative_import_above_the_package_fails(tmp_path):
    package = _package(tmp_path, {"__init__.py": "", "a.py": "from .. import b\n"})
    with pytest.raises(deps.DependencyError, match="above the package"):
        deps.closure(["kit.a"], root=package)


def test_other_packages_are_not_dependencies(kit):
    assert deps.modules_in("import numpy as np\nfrom os import path\nimport kitten", root=kit) == set()


CODE = '''\
"""A module."""

import math


class Box:
    """A box."""

    def area(self, side):
        """The area."""
        return side * side  # square


def norm(x):
    return math.sqrt(x)
'''


@pytest.mark.parametrize("edited", [
    CODE.replace('"""A module."""', '"""A module, described at length.\n\nWith an example."""'),
    CODE.replace('"""The area."""', '"""The area of the box."""'),
    CODE.replace('"""A box."""\n', ""),
    CODE.replace("# square", "# the side, squared") + "\n# a closing comment\n",
    CODE.replace("\n\n\ndef norm", "\n\n\n\n\ndef norm"),
])
def test_docstring_and_comment_edits_keep_the_digest(edited):
    assert edited != CODE
    assert deps.code_digest(edited) == deps.code_digest(CODE)


@pytest.mark.parametrize("edited", [
    CODE.replace("side * side", "side ** 2"),
    CODE.replace("math.sqrt(x)", "math.sqrt(abs(x))"),
    CODE + "\nVERSION = 2\n",
    CODE.replace("def norm(x)", "def norm(y)").replace("sqrt(x)", "sqrt(y)"),
    CODE.replace('return side * side  # square', 'return "side * side"'),
])
def test_code_edits_change_the_digest(edited):
    assert deps.code_digest(edited) != deps.code_digest(CODE)


def test_code_digests_of_files(kit):
    before = deps.code_digests(deps.closure(["kit.fam"], root=kit), root=kit)
    core = kit / "fam" / "core.py"
    core.write_text('"""Now documented."""\n' + core.read_text() + "# and commented\n")
    assert deps.code_digests(deps.closure(["kit.fam"], root=kit), root=kit) == before
    core.write_text(core.read_text().replace("return helper()", "return helper() + 1"))
    after = deps.code_digests(deps.closure(["kit.fam"], root=kit), root=kit)
    assert [name for name in before if before[name] != after[name]] == ["kit.fam.core"]


def test_the_real_labkit_resolves_everywhere():
    """Every labkit module's imports resolve (a broken one would otherwise surface only in the book build)."""
    names = [f"labkit.{path.stem}" for path in deps.ROOT.glob("*.py") if path.stem != "__init__"]
    names += [f"labkit.{path.parent.name}" for path in deps.ROOT.glob("*/__init__.py")]
    modules = deps.closure(names)
    assert set(names) <= set(modules)
    assert {"labkit.bpe", "labkit.gpt", "labkit.train"} <= set(deps.closure(["labkit.zoo"]))
    assert "labkit.bigram" not in deps.closure(["labkit.zoo"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="name must be a module of the package 'labkit'; got 'numpy'"):
        deps.module_file("numpy")
