"""The labs as a student sees them: notebooks opened and run in JupyterLab, in headless Chromium, in the `ci` profile.

One JupyterLab server (127.0.0.1, a token, no browser of its own) serves the module from a temporary folder holding
copies of the notebooks, so the saved outputs never reach the repository; HOME and Jupyter's folders are the test
session's (conftest.py). The browser is tests/browserkit.py's, with every request to another host aborted.

- One lab per chapter is opened and run through the Run menu: every code cell gets an execution count, no cell shows
  an error, and a lab that draws shows its figures (images in the output area).
- One student assignment (a release made the way the course makes it, scripts/course.py release) is checked with
  nbgrader's Validate button: the untouched release names each failing test cell, the reference solution passes.
- The server log has no uncaught exception, with one known exception that is harmless and explained at
  known_early_close; test_an_early_closed_kernel_websocket_is_the_known_harmless_500 produces it on purpose.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import browserkit
import nbformat
import pytest
from browserkit import WAIT_MS, offline_context
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

try:
    from playwright.sync_api import Browser, Page
except ImportError:  # browserkit's `chromium` fixture skips or fails, saying what to install
    pass

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
chromium, browser = browserkit.chromium, browserkit.browser  # the fixtures

# The quickest lab of each chapter in the `ci` profile, and whether it draws figures.
LAB_NOTEBOOKS = {
    "ch01_landmarks": True,
    "ch02_forward_and_grad": True,
    "ch03_attention_from_scratch": True,
    "ch04_tokenizer": True,
    "ch05_healthcare": True,
    "ch06_sharding": False,
}
ASSIGNMENT = "ch02_backprop"  # course/source/ch02_backprop/backprop.ipynb: numpy only, the quickest to validate
LAB_TIMEOUT_MS = 900_000  # one whole notebook, or one validation, on a busy 2-core machine
SERVER_START_S = 180

# --- the server log ---------------------------------------------------------------------------------------------------

# The known early close: jupyter_server 2.21.1 logs an uncaught AttributeError and a 500 when a client closes a kernel
# websocket during the handshake. KernelWebsocketHandler.get awaits the kernel's kernel_info reply (pre_get) before
# tornado accepts the socket; a client that goes away meanwhile makes tornado call on_close, which sets
# `self.connection = None`, and select_subprotocol then reads `self.connection.kernel_ws_protocol`. In JupyterLab this
# happens when a tab is closed or reloaded while its notebook's kernel is still starting (seen with Chromium closing a
# page 2 s after the notebook showed, on a busy machine). Nobody is left to receive the 500, the kernel and its other
# connections are untouched, and the browser's next connection is accepted as usual. Upstream:
# jupyter-server/jupyter_server#1265 (a maintainer: an early close, "likely just return"), fix proposed in #1696, in no
# release yet. Only this exact traceback, on a kernel's channels, is let through.
EARLY_CLOSE_REQUEST = re.compile(r"Uncaught exception GET (/api/kernels/[0-9a-f-]+/channels)\?")
EARLY_CLOSE_ERROR = "AttributeError: 'NoneType' object has no attribute 'kernel_ws_protocol'"
RECORD_START = re.compile(r"^\S")  # a record's continuation lines (tracebacks, JSON) are indented


def log_records(text: str) -> list[str]:
    """The server log cut into records: a line that starts at column 0 and the indented lines under it."""
    records: list[str] = []
    for line in text.splitlines():
        if RECORD_START.match(line) or not records:
            records.append(line)
        elif line.strip():
            records[-1] += "\n" + line
    return records


def known_early_close(record: str) -> str | None:
    """The kernel channels URL of a log record that is the known early close (the comment above), else None:
    an uncaught exception on a kernel's channels, raised in select_subprotocol, ending in EARLY_CLOSE_ERROR."""
    request = EARLY_CLOSE_REQUEST.search(record)
    lines = [line.strip() for line in record.splitlines()]
    frames = [line for line in lines if line.startswith("File ")]
    if request and frames and frames[-1].endswith("in select_subprotocol") and lines[-1] == EARLY_CLOSE_ERROR:
        return request.group(1)
    return None


def server_log_problems(text: str) -> tuple[list[str], list[str]]:
    """(problems, known early closes) in a server log.

    A problem is a record at level E or C, or one with a traceback or an uncaught exception. A known early close
    (known_early_close) is not a problem, and neither are the two records tornado and jupyter_server add to every
    500: the request's headers and the '500 GET <same URL>' line.
    """
    problems, known, pending = [], [], None
    for record in log_records(text):
        if url := known_early_close(record):
            known.append(record)
            pending = url
            continue
        message = record.split("] ", 1)[-1]
        if pending and (message.startswith("{") or f"500 GET {pending}?" in message):
            pending = None if message.startswith("500") else pending
            continue
        pending = None
        if re.match(r"\[[EC] \d", record) or "Traceback" in record or "Uncaught exception" in record:
            problems.append(record)
    return problems, known


# --- the server -------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyter_lab(root: Path, log: Path) -> Iterator[tuple[str, str]]:
    """JupyterLab serving ``root`` on 127.0.0.1 with a token and no browser; yields its URL and the token."""
    token, port = secrets.token_hex(16), free_port()
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.news_url=",
    ] + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])  # CI containers run as root
    env = {**os.environ, "LABKIT_PROFILE": os.environ.get("LABKIT_PROFILE", "ci")}  # HOME etc.: conftest.py's
    env.pop("MPLBACKEND", None)  # conftest.py's Agg would hide every figure; a reader's kernel draws them inline
    # nbgrader's validation runs the notebook from the server, and starts its tools by name.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=5):
                    break
            except OSError:
                assert server.poll() is None, f"jupyter lab exited:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"jupyter lab did not start:\n{log.read_text()[-3000:]}"
                time.sleep(1)
        yield f"http://127.0.0.1:{port}", token
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@dataclass
class Lab:
    """The module's JupyterLab: its URL and token, the folder it serves, its log, and the seconds each run took."""

    url: str
    token: str
    root: Path
    log: Path
    seconds: dict[str, float] = field(default_factory=dict)

    def api(self, path: str, method: str = "GET", body: dict | None = None) -> object:
        """Call the server's REST API; return the decoded JSON answer (None when empty)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            text = answer.read()
        return json.loads(text) if text else None

    def shut_down_kernels(self) -> None:
        """End every session and its kernel, so that the next notebook does not share the machine with it."""
        for session in self.api("/api/sessions"):
            self.api(f"/api/sessions/{session['id']}", method="DELETE")

    def log_since(self, offset: int) -> str:
        return self.log.read_text()[offset:]


def start_release(work: Path) -> tuple[subprocess.Popen, Path]:
    """Start making the student release of ASSIGNMENT with scripts/course.py release, in a copy of course/; return
    the running command and the folder the release will be in (finish_release waits for it)."""
    from test_course import GENERATED  # the course's generated files, which a fresh copy must not carry

    course = work / "course"
    shutil.copytree(REPO / "course", course, ignore=shutil.ignore_patterns(*GENERATED))
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    command = [sys.executable, str(REPO / "scripts" / "course.py"), "release", ASSIGNMENT, "--course", str(course)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    return process, course / "release" / ASSIGNMENT


def finish_release(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, f"scripts/course.py release {ASSIGNMENT} failed:\n{output[-5000:]}"


def put_assignment(root: Path, release: Path) -> None:
    """The released notebooks under ``root``, twice: untouched in answers/ and with the reference solution filled in
    (the course's source notebook's solution cells) in solved/."""
    from test_course import make_submission  # the reference solution put into a release, as a student would

    source = REPO / "course" / "source" / ASSIGNMENT
    notebooks = sorted(release.glob("*.ipynb"))
    assert notebooks, f"no notebook in the release {release}"
    for notebook in notebooks:
        released = nbformat.read(notebook, as_version=4)
        for folder, spec in [("answers", None), ("solved", {})]:
            (root / folder / ASSIGNMENT).mkdir(parents=True, exist_ok=True)
            nb = make_submission(released, nbformat.read(source / notebook.name, as_version=4), spec)
            nbformat.write(nb, root / folder / ASSIGNMENT / notebook.name)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, chromium: str) -> Iterator[Lab]:
    """One JupyterLab for the module, serving copies of the labs and of one student assignment.

    The assignment is there twice: untouched (answers/ch02_backprop) and with the reference solution filled in
    (solved/ch02_backprop), next to the course's student settings (nbgrader_config.py in the folder the server
    runs in, where nbgrader's Validate looks for them).
    """
    work = tmp_path_factory.mktemp("jupyterlab")
    root = work / "lab"
    (root / "notebooks").mkdir(parents=True)
    for name in LAB_NOTEBOOKS:  # copies: JupyterLab saves outputs into what it opens
        shutil.copy(REPO / "notebooks" / f"{name}.ipynb", root / "notebooks")
    shutil.copy(REPO / "course" / "student_nbgrader_config.py", root / "nbgrader_config.py")
    log = work / "jupyter.log"
    release, folder = start_release(work)  # made while the server starts
    try:
        with jupyter_lab(root, log) as (url, token):
            finish_release(release)
            put_assignment(root, folder)
            lab = Lab(url=url, token=token, root=root, log=log)
            yield lab
    finally:
        if release.poll() is None:
            release.kill()
            release.wait()
    if lab.seconds:
        lines = [f"  {name}: {seconds:.0f} s" for name, seconds in lab.seconds.items()]
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        message = "\nJupyterLab, seconds per notebook:\n" + "\n".join(lines)
        message += f"\n  total: {sum(lab.seconds.values()):.0f} s"
        if reporter is not None:
            reporter.write_line(message)


@contextmanager
def lab_page(browser: Browser, lab: Lab, path: str) -> Iterator[tuple[Page, list[str]]]:
    """``path`` opened in JupyterLab, in a workspace of its own (no tab of an earlier test is restored), with no
    network; yields the page and the page's uncaught errors. Afterwards no request may have left 127.0.0.1, and
    every kernel is shut down."""
    context, outside = offline_context(browser, viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(WAIT_MS * 3)
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        workspace = re.sub(r"\W", "-", path)
        page.goto(f"{lab.url}/lab/workspaces/{workspace}/tree/{path}?token={lab.token}")
        yield page, errors
    finally:
        context.close()
        lab.shut_down_kernels()
    assert not outside, f"requests that left 127.0.0.1: {outside}"


KERNEL_IDLE_JS = "/Python.*\\| Idle/.test(document.querySelector('#jp-main-statusbar')?.innerText ?? '')"


def wait_for_kernel(page: Page) -> None:
    """Wait until the notebook is shown and its kernel is idle: the status bar reads "No Kernel | Initializing" while
    the kernel starts, then "Python 3 (ipykernel) | Idle"."""
    page.locator(".jp-Notebook .jp-Cell").first.wait_for()
    page.wait_for_function(f"() => {KERNEL_IDLE_JS}", timeout=LAB_TIMEOUT_MS, polling=500)


def run_all_cells(page: Page) -> None:
    """Run every cell from the Run menu and wait until each code cell has an execution count."""
    wait_for_kernel(page)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    page.wait_for_function(
        f"""() => {{
             const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
             return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent)) && {KERNEL_IDLE_JS};
           }}""",
        timeout=LAB_TIMEOUT_MS, polling=1000,
    )


def assert_clean_log(lab: Lab, offset: int, what: str) -> None:
    problems, _ = server_log_problems(lab.log_since(offset))
    assert not problems, f"{what}: the JupyterLab server log has errors:\n" + "\n---\n".join(problems)


# --- the tests --------------------------------------------------------------------------------------------------------


def test_the_server_log_check_finds_errors_and_lets_only_the_known_early_close_through():
    known = (
        "[E 2026-12-03 19:42:59.341 ServerApp] Uncaught exception GET /api/kernels/1abb-6013/channels?session_id=x\n"
        "    HTTPServerRequest(protocol='http', host='127.0.0.1:46981', method='GET')\n"
        "    Traceback (most recent call last):\n"
        '      File "jupyter_server/services/kernels/websocket.py", line 88, in select_subprotocol\n'
        "        preferred_protocol = self.connection.kernel_ws_protocol\n"
        "                             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        "    AttributeError: 'NoneType' object has no attribute 'kernel_ws_protocol'\n"
        "[E 2026-12-03 19:42:59.429 ServerApp] {\n"
        '      "Host": "127.0.0.1:46981"\n'
        "    }\n"
        "[E 2026-12-03 19:42:59.429 ServerApp] 500 GET /api/kernels/1abb-6013/channels?session_id=x (@127.0.0.1)\n"
    )
    other = (
        "[E 2026-12-03 19:43:00.000 ServerApp] Uncaught exception GET /api/contents/x.ipynb\n"
        "    Traceback (most recent call last):\n"
        "    ValueError: something else\n"
        "[E 2026-12-03 19:43:00.001 ServerApp] 500 GET /api/contents/x.ipynb (@127.0.0.1)\n"
    )
    info = "[I 2026-12-03 19:40:56.551 ServerApp] Connecting to kernel 1abb-6013.\n"
    assert server_log_problems(info + known + info) == ([], [log_records(known)[0]])
    problems, known_found = server_log_problems(known + other)
    assert len(known_found) == 1 and len(problems) == 2
    assert "ValueError: something else" in problems[0] and "500 GET /api/contents/x.ipynb" in problems[1]
    # The same AttributeError anywhere else is a problem.
    elsewhere = known.replace("in select_subprotocol", "in open")
    assert server_log_problems(elsewhere)[0]


def test_an_early_closed_kernel_websocket_is_the_known_harmless_500(lab):
    """A client that closes a kernel websocket before the handshake ends makes jupyter_server 2.21.1 log the known
    AttributeError and 500 (known_early_close); the kernel then answers its next client as usual, and nothing else
    is logged."""
    offset = len(lab.log.read_text())
    kernel = lab.api("/api/kernels", method="POST", body={"name": "python3"})["id"]
    try:
        port = int(lab.url.rsplit(":", 1)[1])
        key = base64.b64encode(os.urandom(16)).decode()
        with socket.create_connection(("127.0.0.1", port)) as client:  # a websocket handshake, then gone
            client.sendall((
                f"GET /api/kernels/{kernel}/channels?session_id=early-close HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Authorization: token {lab.token}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Protocol: v1.kernel.websocket.jupyter.org\r\n\r\n"
            ).encode())
            time.sleep(0.05)
        deadline = time.monotonic() + 60
        while not server_log_problems(lab.log_since(offset))[1] and time.monotonic() < deadline:
            time.sleep(0.5)
        problems, known = server_log_problems(lab.log_since(offset))
        assert len(known) == 1 and f"/api/kernels/{kernel}/channels" in known[0], lab.log_since(offset)
        assert not problems, problems
        reply = asyncio.run(kernel_info(lab, kernel))  # the next client is served: the kernel answers it
        assert reply["content"]["status"] == "ok" and reply["content"]["implementation"] == "ipython", reply
    finally:
        lab.api(f"/api/kernels/{kernel}", method="DELETE")


async def kernel_info(lab: Lab, kernel: str) -> dict:
    """The kernel's kernel_info reply, asked over a websocket of the server's channels (the default protocol: JSON)."""
    url = f"{lab.url.replace('http', 'ws', 1)}/api/kernels/{kernel}/channels?session_id=after-early-close"
    request = HTTPRequest(url, headers={"Authorization": f"token {lab.token}"}, request_timeout=LAB_TIMEOUT_MS / 1000)
    socket_ = await websocket_connect(request)
    try:
        header = {"msg_id": secrets.token_hex(8), "msg_type": "kernel_info_request", "username": "test",
                  "session": "after-early-close", "date": "", "version": "5.3"}
        socket_.write_message(json.dumps({"header": header, "parent_header": {}, "metadata": {}, "content": {},
                                          "channel": "shell"}))
        while True:
            message = await asyncio.wait_for(socket_.read_message(), timeout=LAB_TIMEOUT_MS / 1000)
            assert message is not None, "the server closed the kernel websocket"
            reply = json.loads(message)
            if reply.get("parent_header", {}).get("msg_id") == header["msg_id"] and reply["channel"] == "shell":
                return reply
    finally:
        socket_.close()


@pytest.mark.parametrize("name", list(LAB_NOTEBOOKS))
def test_a_lab_runs_in_jupyterlab_with_no_errors(lab, browser, name):
    """The lab opened and run through JupyterLab's Run menu: every code cell ran, none shows an error, figures show."""
    path = f"notebooks/{name}.ipynb"
    offset = len(lab.log.read_text())
    with lab_page(browser, lab, path) as (page, errors):
        start = time.perf_counter()
        run_all_cells(page)
        lab.seconds[name] = seconds = time.perf_counter() - start
        cells = page.locator(".jp-CodeCell").count()
        error_outputs = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')
        failures = [error_outputs.nth(i).inner_text()[:500] for i in range(error_outputs.count())]
        figures = page.locator(".jp-OutputArea-output img").count()
    print(f"JupyterLab ran {path}: {cells} code cells in {seconds:.0f} s, {figures} figures")
    expected_cells = sum(c.cell_type == "code" for c in nbformat.read(REPO / path, as_version=4).cells)
    assert cells == expected_cells, f"{path}: JupyterLab shows {cells} code cells, the notebook has {expected_cells}"
    assert not failures, f"{path}: error output in JupyterLab:\n" + "\n---\n".join(failures)
    if LAB_NOTEBOOKS[name]:
        assert figures >= 1, f"{path}: no figure shown in JupyterLab"
    assert not errors, f"{path}: JupyterLab page errors: {errors}"
    assert_clean_log(lab, offset, path)


def validate_in_jupyterlab(browser: Browser, lab: Lab, path: str) -> tuple[str, list[str]]:
    """Open ``path``, press nbgrader's Validate button, and return the text of the dialog and its classes."""
    with lab_page(browser, lab, path) as (page, errors):
        wait_for_kernel(page)
        button = page.locator(".validate-button")
        button.wait_for()
        start = time.perf_counter()
        button.locator("jp-button, button").first.click()
        message = page.locator(".jp-Dialog #validation-message")
        message.wait_for(timeout=LAB_TIMEOUT_MS)
        lab.seconds[f"validate {path}"] = time.perf_counter() - start
        title = page.locator(".jp-Dialog .jp-Dialog-header").inner_text()
        text, classes = message.inner_text(), (message.get_attribute("class") or "").split()
        page.locator(".jp-Dialog .jp-mod-accept").click()
    assert not errors, f"{path}: JupyterLab page errors: {errors}"
    assert "Validation Results" in title, title
    return text, classes


def test_validate_button_names_each_failing_part_of_an_untouched_assignment(lab, browser):
    offset = len(lab.log.read_text())
    path = f"answers/{ASSIGNMENT}/backprop.ipynb"
    text, classes = validate_in_jupyterlab(browser, lab, path)
    print(f"Validate on the untouched release:\n{text[:2000]}")
    assert "validation-failed" in classes, (classes, text)
    assert text.count("The following cell failed:") == 4, text
    for check in ["check_forward", "check_softmax_cross_entropy", "check_backward", "check_train"]:
        assert check in text, f"Validate does not name the failing part {check}:\n{text}"
    assert "NotImplementedError" in text, text
    assert_clean_log(lab, offset, f"Validate {path}")


def test_validate_button_passes_the_reference_solution(lab, browser):
    offset = len(lab.log.read_text())
    path = f"solved/{ASSIGNMENT}/backprop.ipynb"
    text, classes = validate_in_jupyterlab(browser, lab, path)
    assert "validation-success" in classes, (classes, text)
    assert "Success! Your notebook passes all the tests." in text, text
    assert_clean_log(lab, offset, f"Validate {path}")
