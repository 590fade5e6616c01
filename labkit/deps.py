"""Which labkit modules a piece of code depends on, and a digest of their code that ignores docstrings and comments.

Two caches use it: the book build re-executes a notebook when the code it depends on changes
(``scripts/build_book.py``), and ``labkit.zoo`` retrains the pretrained model when the code that decides the weights
changes. Both ask the same two questions:

- ``modules_in(code)``: the labkit modules some code imports (``import labkit.x``, ``from labkit.pkg import y``,
  ``from labkit import pkg``, ``labkit.x.f`` after ``import labkit``, relative imports inside labkit), and
  ``closure(names)``: those modules with everything they import from labkit, followed transitively, plus the
  packages (``__init__.py``) Python runs to import them. An import that names nothing in labkit (no module, and no
  name the package's ``__init__.py`` binds, such as ``labkit.get_profile``) raises ``DependencyError`` naming the
  import and the file, rather than being left out of the key.
- ``code_digest(path)``: a hash of the module's syntax tree with its docstrings removed. Comments are not in the tree,
  nor are line numbers, so editing prose changes no digest; any change to the code does.

Every function takes the package folder as ``root`` (this labkit by default); its name is the package's name.

>>> sorted(modules_in("from labkit import tokenize, get_profile"))    # get_profile: a name __init__.py imports
['labkit', 'labkit.tokenize']
>>> "labkit.profiles" in closure(["labkit.tokenize"])                  # labkit/__init__.py imports it
True
>>> code_digest("def f():\\n    '''Prose.'''\\n    return 1  # a comment") == code_digest("def f():\\n    return 1")
True
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from pathlib import Path

__all__ = ["DependencyError", "ROOT", "closure", "code_digest", "code_digests", "module_file", "modules_in"]

ROOT = Path(__file__).resolve().parent  # this labkit: the default package folder


class DependencyError(ImportError):
    """An import of the package that names no module of it and no name its ``__init__.py`` binds."""


def module_file(name: str, *, root: Path = ROOT) -> Path | None:
    """The source file of module ``name`` (``pkg/__init__.py`` for a package), or None if there is none.

    >>> module_file("labkit.train").name, module_file("labkit").name, module_file("labkit.get_profile")
    ('train.py', '__init__.py', None)
    """
    parts = name.split(".")
    if parts[0] != root.name:
        raise ValueError(f"name must be a module of the package {root.name!r}; got {name!r}")
    folder = root.joinpath(*parts[1:])
    for path in (folder / "__init__.py", folder.with_suffix(".py") if len(parts) > 1 else None):
        if path is not None and path.is_file():
            return path
    return None


def _parse(source: str, origin: str = "<code>") -> ast.Module:
    """``source`` parsed; lines holding IPython magics or shell escapes (``%pip``, ``!ls``) are read as ``pass``."""
    try:
        return ast.parse(source, filename=origin)
    except SyntaxError:
        lines = [line[: len(line) - len(line.lstrip())] + "pass" if line.lstrip().startswith(("%", "!")) else line
                 for line in source.splitlines()]
        return ast.parse("\n".join(lines), filename=origin)


def _bound_names(path: Path) -> set[str]:
    """Names a module binds at its top level (definitions, assignments, imports), not inside functions or classes."""
    names: set[str] = set()
    todo: list[ast.AST] = list(ast.parse(path.read_text(encoding="utf-8")).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        todo.extend(ast.iter_child_nodes(node))
    return names


class _Finder:
    """Collects the modules of the package under ``root`` that one piece of code imports."""

    def __init__(self, root: Path, origin: str, module: str | None):
        self.root, self.origin, self.module = root, origin, module
        self.found: set[str] = set()
        self.aliases: dict[str, str] = {}  # local name -> the package module it stands for

    def fail(self, node: ast.AST, what: str) -> DependencyError:
        line = getattr(node, "lineno", "?")
        return DependencyError(f"{self.origin}, line {line}: {what}; the dependencies of this code cannot be known")

    def is_module(self, name: str) -> bool:
        return module_file(name, root=self.root) is not None

    def member(self, node: ast.AST, package: str, attribute: str) -> str | None:
        """``package.attribute``: a submodule (returned, and recorded), or a name the package binds (None)."""
        name = f"{package}.{attribute}"
        if self.is_module(name):
            self.found.add(name)
            return name
        path = module_file(package, root=self.root)
        if path is not None and path.name != "__init__.py":
            return None  # an attribute of a plain module: its file is already a dependency
        if path is None or attribute not in _bound_names(path):
            raise self.fail(node, f"{name} is neither a module of {self.root.name} nor a name {package}'s "
                                  f"__init__.py binds")
        return None

    def absolute(self, node: ast.ImportFrom) -> str:
        """The module an ``ImportFrom`` names, relative imports resolved against the importing module."""
        if node.level == 0:
            return node.module or ""
        if self.module is None:
            raise self.fail(node, f"relative import 'from {'.' * node.level}{node.module or ''} import ...' "
                                  f"outside a module of {self.root.name}")
        path = module_file(self.module, root=self.root)
        package = self.module if path is not None and path.name == "__init__.py" else self.module.rpartition(".")[0]
        parts = package.split(".")
        if node.level - 1 >= len(parts):
            raise self.fail(node, f"relative import with {node.level} dots goes above the package {self.root.name}")
        base = ".".join(parts[: len(parts) - (node.level - 1)])
        return f"{base}.{node.module}" if node.module else base

    def visit(self, tree: ast.Module) -> None:
        package = self.root.name
        attributes: list[ast.Attribute] = []  # read after every import: imports bind the names they are read from
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                attributes.append(node)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == package:
                        self.need(node, alias.name)
                        self.aliases[alias.asname or package] = alias.name if alias.asname else package
            elif isinstance(node, ast.ImportFrom):
                source = self.absolute(node)
                if source.split(".")[0] != package:
                    continue
                self.need(node, source)
                for alias in node.names:
                    if alias.name != "*" and (sub := self.member(node, source, alias.name)) is not None:
                        self.aliases[alias.asname or alias.name] = sub
        for node in attributes:
            self.attribute_chain(node)

    def need(self, node: ast.AST, name: str) -> None:
        if not self.is_module(name):
            raise self.fail(node, f"{name} is not a module of {self.root.name} (no {name.replace('.', '/')}.py "
                                  f"and no {name.replace('.', '/')}/__init__.py under {self.root.parent})")
        self.found.add(name)

    def attribute_chain(self, node: ast.Attribute) -> None:
        """``alias.a.b.c`` (``alias`` bound to a package module): follow the chain through submodules until it
        reaches a name a module binds; other attribute reads are not imports."""
        chain: list[str] = []
        current: ast.expr = node
        while isinstance(current, ast.Attribute):
            chain.append(current.attr)
            current = current.value
        if not isinstance(current, ast.Name) or current.id not in self.aliases:
            return
        module = self.aliases[current.id]
        for attribute in reversed(chain):
            sub = self.member(node, module, attribute)
            if sub is None:
                return
            module = sub


def modules_in(code: str | Iterable[str], *, root: Path = ROOT, origin: str = "<code>",
               module: str | None = None) -> set[str]:
    """The modules of the package at ``root`` that ``code`` (a source, or several such as a notebook's code cells)
    imports directly; ``module`` is the code's own module name, needed for its relative imports.

    >>> sorted(modules_in(["import labkit\\nlabkit.nn.MLP", "%matplotlib inline\\nfrom labkit.train import fit"]))
    ['labkit', 'labkit.nn', 'labkit.train']
    """
    sources = [code] if isinstance(code, str) else list(code)
    finder = _Finder(Path(root), origin, module)
    for source in sources:
        finder.visit(_parse(source, origin))
    return finder.found


def closure(names: Iterable[str], *, root: Path = ROOT) -> list[str]:
    """``names`` with every module of the package they import, transitively, and the packages that contain them.

    >>> "labkit.profiles" in closure(["labkit.train"]) and "labkit.bigram" not in closure(["labkit.train"])
    True
    """
    root = Path(root)
    todo, seen = set(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_file(name, root=root)
        if path is None:
            raise DependencyError(f"{name} is not a module of {root.name} (looked under {root})")
        seen.add(name)
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}  # run before the module
        rel = path.relative_to(root.parent)
        todo |= (parents | modules_in(path.read_text(encoding="utf-8"), root=root, origin=str(rel), module=name)) - seen
    return sorted(seen)


def code_digest(source: str | Path) -> str:
    """SHA-256 of the code of ``source`` (a path, or Python source text): its syntax tree without docstrings.

    Comments, blank lines, line numbers and the docstrings of the module, its classes and functions do not enter
    it; any other change does.
    """
    text = source.read_text(encoding="utf-8") if isinstance(source, Path) else source
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                node.body = node.body[1:]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def code_digests(names: Iterable[str], *, root: Path = ROOT) -> dict[str, str]:
    """``{module: code_digest(its file)}`` for each of ``names`` (give it a ``closure``)."""
    digests = {}
    for name in sorted(names):
        path = module_file(name, root=Path(root))
        if path is None:
            raise DependencyError(f"{name} is not a module of {Path(root).name} (looked under {root})")
        digests[name] = code_digest(path)
    return digests
