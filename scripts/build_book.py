"""Execute the book's notebooks (only those whose code or labkit dependencies changed) and build the website.

    python scripts/build_book.py                  # -> _build/html, profile from LABKIT_PROFILE or the backend
    python scripts/build_book.py --root /tmp/b    # -> /tmp/b/_build/html (tests use this)

Why not Jupyter Book's own execution cache: it keys a notebook on its own code only, so an edit to a labkit module
would not re-run the notebooks that import it, and a `ci` build would be reused by a `cpu` build. Here the key of a
notebook is its code cells + the compute profile + the code of every labkit module it imports (transitively; found
and digested by labkit.deps, which ignores docstrings and comments) + requirements.txt. Executed notebooks are kept
in _build/executed; the site is built from a staged copy of the book (_build/src) with execution turned off, so
Jupyter Book only renders.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's labkit, whichever checkout the environment's editable install names
from labkit import deps  # noqa: E402 - after the path is set

LABKIT = REPO / "labkit"  # the labkit of this checkout: the one the notebooks' kernels import (PYTHONPATH below)
STAGED_FILES = ["_config.yml", "_toc.yml", "references.bib"]
STAGED_DIRS = ["book"]
STAGED_GLOBS = ["labkit/**/*.py"]  # the code the chapters show with {literalinclude}
CELL_TIMEOUT_S = 1200


def toc_files(toc_path: Path) -> list[str]:
    """Every file named in _toc.yml, in reading order (without extensions)."""
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                found.append(str(node["file"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    toc = yaml.safe_load(toc_path.read_text())
    found.append(str(toc["root"]))
    walk({k: v for k, v in toc.items() if k != "root"})
    return found


def toc_notebooks() -> list[Path]:
    """The notebooks the website shows, in toc order; each must exist."""
    notebooks = []
    for name in toc_files(REPO / "_toc.yml"):
        path = REPO / f"{name}.ipynb"
        if path.exists():
            notebooks.append(path)
        elif not (REPO / f"{name}.md").exists():
            raise SystemExit(f"_toc.yml names {name!r}, but neither {name}.ipynb nor {name}.md exists")
    return notebooks


def labkit_closure(nb: nbformat.NotebookNode, origin: str = "<notebook>") -> list[str]:
    """The labkit modules the notebook's code cells import, with everything they import from labkit, transitively."""
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    return deps.closure(deps.modules_in(code, root=LABKIT, origin=origin), root=LABKIT)


def notebook_key(nb: nbformat.NotebookNode, profile: str, origin: str = "<notebook>") -> tuple[str, list[str]]:
    """A hash of everything that can change the notebook's outputs, and the labkit files that went into it.

    labkit modules enter through the digest of their code (``labkit.deps.code_digest``): an edit to a docstring or a
    comment changes no key.
    """
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    modules = labkit_closure(nb, origin)
    digest = hashlib.sha256()
    digest.update(json.dumps({"code": code, "profile": profile,
                              "labkit": deps.code_digests(modules, root=LABKIT)}, sort_keys=True).encode())
    digest.update((REPO / "requirements.txt").read_bytes())
    files = [deps.module_file(name, root=LABKIT) for name in modules]
    return digest.hexdigest(), [str(path.relative_to(REPO)) for path in files if path is not None]


def execute(path: Path, nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    return nb


def with_current_text(source: nbformat.NotebookNode, executed: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The source notebook (current markdown) carrying the outputs of an execution of the same code."""
    outputs = iter(cell for cell in executed.cells if cell.cell_type == "code")
    merged = nbformat.from_dict(json.loads(json.dumps(source)))
    for cell in merged.cells:
        if cell.cell_type == "code":
            done = next(outputs)
            cell.outputs, cell.execution_count = done.outputs, done.execution_count
    merged.metadata["labkit_build"] = executed.metadata["labkit_build"]
    return merged


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write only if the bytes differ, so Sphinx's incremental build sees an unchanged mtime."""
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def run_notebooks(build: Path, profile: str, force: bool) -> tuple[int, dict[str, bytes]]:
    """Execute stale notebooks; return how many ran and the staged bytes of every notebook.

    A notebook that raises does not stop the others: each failure is reported, the failed notebook (its outputs up
    to the error) is kept in build/failed/, and the build stops once all have run (exit 1, naming every failure).
    """
    notebooks = toc_notebooks()
    staged: dict[str, bytes] = {}
    failed: list[str] = []
    ran = 0
    for i, path in enumerate(notebooks, 1):
        rel = str(path.relative_to(REPO))
        source = nbformat.read(path, as_version=4)
        try:
            key, labkit_files = notebook_key(source, profile, origin=rel)
        except deps.DependencyError as error:  # an import the key cannot follow: the build must not guess
            raise SystemExit(f"cannot key {rel}: {error}") from error
        cached_path = build / "executed" / rel
        cached = nbformat.read(cached_path, as_version=4) if cached_path.exists() else None
        if not force and cached is not None and cached.metadata.get("labkit_build", {}).get("key") == key:
            print(f"[{i}/{len(notebooks)}] {rel}: up to date (profile {profile})", flush=True)
        else:
            why = "forced" if force else ("new" if cached is None else "code, profile or labkit changed")
            print(f"[{i}/{len(notebooks)}] {rel}: executing ({why}; profile {profile}) ...", flush=True)
            start = time.perf_counter()
            nb = nbformat.from_dict(json.loads(json.dumps(source)))
            try:
                execute(path, nb)
            except Exception as error:  # noqa: BLE001 - report which notebook failed, run the others, then stop
                print(f"\nFAILED: {rel}\n{error}", file=sys.stderr, flush=True)
                write_if_changed(build / "failed" / rel, nbformat.writes(nb).encode())  # outputs up to the error
                failed.append(rel)
                continue
            (build / "failed" / rel).unlink(missing_ok=True)
            seconds = time.perf_counter() - start
            nb.metadata["labkit_build"] = {"key": key, "profile": profile, "labkit": labkit_files,
                                           "seconds": round(seconds, 1)}
            write_if_changed(cached_path, nbformat.writes(nb).encode())
            cached = nb
            ran += 1
            print(f"[{i}/{len(notebooks)}] {rel}: done in {seconds:.1f} s", flush=True)
        staged[rel] = nbformat.writes(with_current_text(source, cached)).encode()
    if failed:
        print(f"\n{len(failed)} notebook(s) failed: {', '.join(failed)} (see {build / 'failed'})", file=sys.stderr)
        raise SystemExit(1)
    return ran, staged


def stage(build: Path, notebooks: dict[str, bytes]) -> Path:
    """Mirror the book's sources into build/src (only changed files are rewritten); drop files no longer there."""
    src = build / "src"
    wanted: dict[str, bytes] = dict(notebooks)
    for name in STAGED_FILES:
        wanted[name] = (REPO / name).read_bytes()
    for folder in STAGED_DIRS:
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                wanted[str(path.relative_to(REPO))] = path.read_bytes()
    for pattern in STAGED_GLOBS:
        for path in REPO.glob(pattern):
            wanted[str(path.relative_to(REPO))] = path.read_bytes()
    for rel, data in wanted.items():
        write_if_changed(src / rel, data)
    for path in sorted(src.rglob("*"), reverse=True):
        if path.is_file() and str(path.relative_to(src)) not in wanted:
            path.unlink()
    return src


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO, help="the site goes to ROOT/_build/html")
    parser.add_argument("--force", action="store_true", help="execute every notebook even if up to date")
    args = parser.parse_args()

    import labkit

    profile = labkit.get_profile().name
    os.environ["LABKIT_PROFILE"] = profile  # the kernels inherit it, so key and execution agree
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    # The kernels import this checkout's labkit, whichever checkout the environment's editable install points at.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    build = args.root.resolve() / "_build"
    start = time.perf_counter()
    ran, notebooks = run_notebooks(build, profile, args.force)
    src = stage(build, notebooks)
    command = [
        str(Path(sys.executable).parent / "jupyter-book"), "build", str(src), "--path-output", str(args.root.resolve()),
        "--builder", "html", "--warningiserror", "--keep-going",
    ]
    if ran:  # pages that paste numbers from a re-executed notebook must be rewritten too
        command.append("--all")
    print("building the website:", " ".join(command[1:]), flush=True)
    result = subprocess.run(command, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"the website build failed (exit {result.returncode}); see the warnings above")
    print(f"\n{ran} notebook(s) executed, total {time.perf_counter() - start:.0f} s")
    print(f"Website: {build / 'html' / 'index.html'}")


if __name__ == "__main__":
    main()
