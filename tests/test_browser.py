"""The website as a reader sees it: the `ci`-profile build opened in headless Chromium, with no network.

Playwright for Python (pinned in requirements.txt) drives Debian's Chromium (/usr/bin/chromium, or the program named
by LABKIT_CHROMIUM); Playwright's own browser download is never used. The site is served from its folder on
127.0.0.1, and every browser context aborts and records each request to any other host, so a page that needs the
internet fails here as it would for a reader offline.

Where no Chromium exists these tests skip, saying how to install it; where the environment variable CI or
LABKIT_REQUIRE_BROWSER is set (.ci/run sets the second) they fail instead. The browser, its fixtures and the
offline contexts are tests/browserkit.py's, shared with tests/test_jupyterlab.py (the labs in JupyterLab).

One browser serves the module. Every page is visited once (the `visits` fixture) and what the reader would see is
collected; the tests then check the collection, naming the page and the element at fault. `find_*` functions turn a
visit into problem messages, so the planted broken page (test_a_broken_page_is_caught) goes through the same checks.

To develop against an existing build instead of building the book again, point LABKIT_TEST_SITE at its root
(the folder holding _build/html), for example one made by `scripts/build_book.py --root /tmp/site-build`.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from urllib.parse import parse_qs, unquote, urldefrag, urlsplit

import psutil
import pytest
import yaml

import browserkit
from browserkit import WAIT_MS, is_local, offline_context
from localweb import serve

try:
    from playwright.sync_api import Browser, BrowserContext, Page
    from playwright.sync_api import Error as PlaywrightError
except ImportError:  # browserkit's `chromium` fixture skips or fails, saying what to install
    pass

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PHONE = {"width": 390, "height": 844}
TABS = 2  # pages loading at once: the browser typesets one page's math while the test checks another
# TeX that MathJax should have replaced; text inside code, scripts and typeset math is not searched.
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\begin\{|\\end\{|\$[^$\n]*\\[A-Za-z]+[^$\n]*\$")
SEARCH_TERM = "SwiGLU"  # a term from chapter 3 (book/ch03_transformer.md)
SEARCH_TARGET = "book/ch03_transformer.html"

# The browser fixtures (tests/browserkit.py), shared with tests/test_jupyterlab.py.
chromium, browser = browserkit.chromium, browserkit.browser


# --- finding the site -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(request: pytest.FixtureRequest, chromium: str) -> Path:
    """The website folder: LABKIT_TEST_SITE's _build/html if set, else the session's build (tests/conftest.py).

    Depends on `chromium` so that a machine without a browser skips before the book is built.
    """
    given = os.environ.get("LABKIT_TEST_SITE")
    if given:
        html = Path(given) / "_build" / "html"
    else:
        book = request.getfixturevalue("built_book")
        book.check()
        html = book.html
    assert (html / "index.html").is_file(), f"no website at {html}"
    return html


@pytest.fixture(scope="module")
def base_url(site: Path) -> Iterator[str]:
    with serve(site) as url:
        yield url


# --- one visit of one page --------------------------------------------------------------------------------------

COLLECT_JS = r"""
async () => {
  for (const img of document.images) {  // lazy images below the fold: load them now
    if (!img.complete || img.naturalWidth === 0) {
      img.loading = 'eager';
      try { await img.decode(); } catch (e) {}
    }
  }
  await document.fonts.ready;
  const visible = document.querySelector('main') || document.body;
  const copy = visible.cloneNode(true);
  copy.querySelectorAll('pre, code, script, style, textarea, mjx-container, .highlight').forEach(e => e.remove());
  const describe = e => `<${e.tagName.toLowerCase()}${e.id ? ' id=' + e.id : ''}> ` + e.textContent.trim().slice(0, 80);
  const theme = document.querySelector('.theme-switch-button');
  return {
    title: document.title,
    text: copy.textContent,
    links: [...document.querySelectorAll('a[href]')]
      .map(a => ({href: a.href, text: a.textContent.trim().slice(0, 60)})),
    images: [...document.images].map(img => ({src: img.currentSrc || img.src, alt: img.alt,
                                              ok: img.complete && img.naturalWidth > 0})),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id).concat(
         [...document.querySelectorAll('a[name]')].map(e => e.name)),
    math: [...document.querySelectorAll('.math')].map(e => ({typeset: !!e.querySelector('mjx-container'),
                                                           source: e.textContent.trim().slice(0, 80)})),
    typeset: document.querySelectorAll('mjx-container').length,
    // MathJax keeps each expression's TeX; a TeX error becomes <merror>, an undefined command red text.
    mathErrors: (window.MathJax?.startup?.document?.math ? [...MathJax.startup.document.math] : [])
      .filter(item => /<merror|mathcolor="red"/.test(MathJax.startup.toMML(item.root)))
      .map(item => (item.typesetRoot?.querySelector('[data-mjx-error]')?.getAttribute('data-mjx-error')
                    || 'undefined command') + ' in ' + item.math.trim().slice(0, 80)),
    prev: document.querySelector('.prev-next-area a.left-prev')?.href ?? null,
    next: document.querySelector('.prev-next-area a.right-next')?.href ?? null,
    toc: [...document.querySelectorAll('nav.bd-docs-nav a.reference.internal')].map(a => a.href),
    launch: [...document.querySelectorAll('.dropdown-launch-buttons a[href]')].map(a => a.href),
    source: [...document.querySelectorAll('.dropdown-source-buttons a[href]')].map(a => a.href),
  };
}
"""


PHONE_JS = r"""
() => {
  const width = document.documentElement.clientWidth;
  const scrolls = e => { for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX; if (o === 'auto' || o === 'scroll' || o === 'hidden') return true; }
    return false; };
  const column = document.querySelector('main .bd-article') || document.querySelector('main');
  const over = [...column.querySelectorAll('*')].filter(e => {
      const r = e.getBoundingClientRect(); return r.width > 0 && r.right > width + 1 && !scrolls(e); });
  return {
    width, pageWidth: document.documentElement.scrollWidth, columnRight: column.getBoundingClientRect().right,
    over: over.slice(0, 5).map(e => `<${e.tagName.toLowerCase()} class="${e.className}"> `
                                   + `right=${Math.round(e.getBoundingClientRect().right)} `
                                   + e.textContent.trim().slice(0, 60)),
  };
}
"""


@dataclass
class Visit:
    """What one page showed: its problems as seen by the browser, and what the tests check."""

    path: str  # relative to the site, e.g. "book/ch03_transformer.html"
    title: str = ""
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    links: list[dict] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    math: list[dict] = field(default_factory=list)
    typeset: int = 0
    math_errors: list[str] = field(default_factory=list)
    raw_tex: list[str] = field(default_factory=list)
    prev: str | None = None
    next: str | None = None
    toc: list[str] = field(default_factory=list)
    launch: list[str] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    phone: dict = field(default_factory=dict)  # PHONE_JS's measures at phone width


def wait_for_math(page: Page) -> str | None:
    """Wait until MathJax has typeset the page; return a problem message if it never does."""
    try:
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=WAIT_MS)
        page.evaluate("() => MathJax.startup.promise")
    except PlaywrightError as error:
        return f"MathJax did not start or typeset: {str(error).splitlines()[0]}"
    return None


def start_visit(context: BrowserContext, base_url: str, path: str) -> tuple[Page, Visit]:
    """Open ``path`` in a new tab of ``context`` and return as soon as the navigation starts (it loads on its own)."""
    result = Visit(path=path)
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and result.console_errors.append(f"{m.text} ({m.location})"))
    page.on("pageerror", lambda error: result.console_errors.append(f"uncaught: {error}"))
    page.on("requestfailed", lambda r: (result.failed_requests.append(f"{r.url}: {r.failure}") if is_local(r.url)
                                        else result.outside.append(r.url)))
    page.on("response", lambda r: r.status >= 400 and result.failed_requests.append(f"{r.url}: HTTP {r.status}"))
    page.goto(base_url + path, wait_until="commit")
    return page, result


def finish_visit(page: Page, result: Visit, screenshot: Path | None = None) -> Visit:
    """Wait for the page and its math, collect what it shows (desktop, then phone width), and close the tab."""
    try:
        page.wait_for_load_state("load")
        if page.locator(".math").count():
            if problem := wait_for_math(page):
                result.math_errors.append(problem)
        found = page.evaluate(COLLECT_JS)
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
        page.set_viewport_size(PHONE)  # the layout is responsive CSS: no reload needed to see the phone layout
        result.phone = page.evaluate(PHONE_JS)
        if screenshot is not None:
            page.screenshot(path=str(screenshot.with_name(screenshot.stem + "_phone.png")))
    finally:
        page.close()
    text = found["text"]
    result.raw_tex = [text[max(0, m.start() - 40): m.end() + 40].strip() for m in RAW_TEX.finditer(text)]
    for name in ["title", "links", "images", "math", "typeset", "prev", "next", "toc", "launch", "source"]:
        setattr(result, name, found[name])
    result.math_errors += found["mathErrors"]
    result.ids = set(found["ids"])
    return result


def visit_all(context: BrowserContext, base_url: str, paths: list[str], screenshots: dict[str, Path],
              tabs: int = TABS) -> dict[str, Visit]:
    """Visit ``paths``, ``tabs`` at a time: while one page is checked, the next ones load and typeset their math."""
    found: dict[str, Visit] = {}
    loading: deque[tuple[Page, Visit]] = deque()
    for path in paths + [None] * tabs:
        if path is not None:
            loading.append(start_visit(context, base_url, path))
        if loading and (len(loading) >= tabs or path is None):
            page, result = loading.popleft()
            found[result.path] = finish_visit(page, result, screenshots.get(result.path))
    return found


# --- checks: each returns messages naming the page and the element ---------------------------------------------


def site_path(url: str, base_url: str) -> str | None:
    """The site-relative file a local URL points at (index.html for a folder), or None for another site."""
    if not url.startswith(base_url):
        return None
    path = unquote(urlsplit(url).path)[len(urlsplit(base_url).path):]
    return path + "index.html" if path == "" or path.endswith("/") else path


def find_load_problems(v: Visit) -> list[str]:
    return (
        [f"{v.path}: console error: {e}" for e in v.console_errors]
        + [f"{v.path}: failed request: {r}" for r in v.failed_requests]
        + [f"{v.path}: tried to reach the internet: {u}" for u in v.outside]
    )


def find_broken_links(v: Visit, site: Path, base_url: str, seen: dict[str, Visit]) -> list[str]:
    """Internal links whose file is missing, or whose #anchor is not on a page we visited."""
    problems = []
    for link in v.links:
        url, anchor = urldefrag(link["href"])
        target = site_path(url, base_url)
        if target is None:
            continue
        where = f"{v.path}: link <a href={link['href'][len(base_url):]!r}> ({link['text']!r})"
        if not (site / target).is_file():
            problems.append(f"{where}: no file {target}")
        elif anchor and target in seen and unquote(anchor) not in seen[target].ids:
            problems.append(f"{where}: no element id={anchor!r} on {target}")
    return problems


def find_broken_images(v: Visit) -> list[str]:
    return [f"{v.path}: image <img src={i['src'][:120]!r} alt={i['alt']!r}> did not load"
            for i in v.images if not i["ok"]]


def find_math_problems(v: Visit) -> list[str]:
    problems = [f"{v.path}: math error: {e}" for e in v.math_errors]
    problems += [f"{v.path}: math not typeset: {m['source']!r}" for m in v.math if not m["typeset"]]
    problems += [f"{v.path}: raw TeX in the text: ...{snippet}..." for snippet in v.raw_tex]
    if v.math and v.typeset < len(v.math):
        problems.append(f"{v.path}: {len(v.math)} math elements but {v.typeset} typeset (mjx-container)")
    return problems


# --- the visits of every page -----------------------------------------------------------------------------------


def toc_pages() -> list[str]:
    """Every page of the book in reading order, as site paths (root first)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_book", REPO / "scripts" / "build_book.py")
    build_book = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_book)
    return [f"{name}.html" for name in build_book.toc_files(REPO / "_toc.yml")]


def screenshot_pages(pages: list[str]) -> list[str]:
    """The home page and the first page of every chapter (book/chNN_*), one per chapter number."""
    chosen, chapters = [pages[0]], set()
    for page in pages:
        if m := re.match(r"book/ch(\d+)_", page):
            if m.group(1) not in chapters:
                chapters.add(m.group(1))
                chosen.append(page)
    return chosen


def browser_cpu_seconds() -> float:
    """CPU seconds used so far by this process's child processes that are still running (the browser's)."""
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:  # a child that just exited
            pass
    return total


def lightest(pages: list[str], visits: dict[str, Visit], with_math: bool = False) -> str:
    """The page with the fewest typeset expressions (and at least one if ``with_math``): quick to open again."""
    candidates = [p for p in pages if visits[p].typeset > 0] if with_math else pages
    return min(candidates, key=lambda p: visits[p].typeset)


@dataclass
class SiteVisits:
    pages: list[str]  # the toc pages, in reading order
    visits: dict[str, Visit]
    seconds: float
    screenshots: Path


@pytest.fixture(scope="module")
def visits(browser: Browser, site: Path, base_url: str) -> SiteVisits:
    """Visit every toc page, search and genindex once (desktop, then phone width); screenshot the chapter pages."""
    pages = toc_pages()
    shots_dir = site.parent / "screenshots"
    shots = {p: shots_dir / (p.replace("/", "_").removesuffix(".html") + ".png") for p in screenshot_pages(pages)}
    context, outside = offline_context(browser, viewport={"width": 1280, "height": 900})
    start, cpu = time.perf_counter(), browser_cpu_seconds()
    try:
        found = visit_all(context, base_url, pages + ["search.html", "genindex.html"], shots)
    finally:
        context.close()
    seconds = time.perf_counter() - start
    print(f"visited {len(found)} pages in {seconds:.1f} s ({browser_cpu_seconds() - cpu:.1f} s of browser CPU time, "
          f"{TABS} tabs at a time); screenshots in {shots_dir}")
    assert len(outside) == sum(len(v.outside) for v in found.values()), outside
    return SiteVisits(pages=pages, visits=found, seconds=seconds, screenshots=shots_dir)


def _report(problems: list[str], limit: int = 30) -> str:
    more = f"\n... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{len(problems)} problem(s):\n" + "\n".join(problems[:limit]) + more


# --- the tests --------------------------------------------------------------------------------------------------


def test_every_page_loads_with_no_errors_and_no_internet(visits):
    problems = [p for v in visits.visits.values() for p in find_load_problems(v)]
    assert not problems, _report(problems)


def test_every_internal_link_and_image_resolves(visits, site, base_url):
    problems = []
    for v in visits.visits.values():
        problems += find_broken_links(v, site, base_url, visits.visits) + find_broken_images(v)
    assert not problems, _report(problems)
    assert sum(len(v.images) for v in visits.visits.values()) > 0


def test_mathjax_typesets_every_page_offline(visits):
    problems = [p for v in visits.visits.values() for p in find_math_problems(v)]
    assert not problems, _report(problems)
    math_pages = {path: v.typeset for path, v in visits.visits.items() if v.math}
    print(f"{len(math_pages)} pages with math, {sum(math_pages.values())} typeset expressions: {math_pages}")
    assert len(math_pages) >= 5, math_pages
    assert math_pages.get("book/ch03_transformer.html", 0) >= 20


def test_screenshots_of_home_and_every_chapter(visits):
    expected = screenshot_pages(visits.pages)
    written = sorted(p.name for p in visits.screenshots.glob("*.png"))
    assert len(expected) >= 7, expected  # home + chapters 1-6
    for page in expected:
        name = page.replace("/", "_").removesuffix(".html") + ".png"
        assert name in written, f"no screenshot {name} in {visits.screenshots}"


def test_table_of_contents_lists_every_page_and_navigates(visits, browser, base_url):
    root = visits.pages[0]
    toc = [site_path(urldefrag(u)[0], base_url) for u in visits.visits[root].toc]
    missing = [p for p in visits.pages[1:] if p not in toc]
    assert not missing, f"{root}: the sidebar's table of contents lacks {missing}"

    context, outside = offline_context(browser)
    try:
        page = context.new_page()
        page.goto(base_url)  # the site's index.html sends the reader on to the root page
        page.wait_for_url(f"**/{root}")
        links = page.locator("nav.bd-docs-nav li.toctree-l1 > a.reference.internal")
        targets = [site_path(h, base_url) for h in links.evaluate_all("links => links.map(a => a.href)")]
        target = lightest([t for t in targets if t in visits.visits], visits.visits)
        links.nth(targets.index(target)).click()
        page.wait_for_url(f"**/{target}")
        assert page.locator("h1").first.inner_text().strip() in visits.visits[target].title
    finally:
        context.close()
    assert not outside, outside


def test_previous_and_next_links_follow_reading_order(visits, browser, base_url):
    pages, seen = visits.pages, visits.visits
    problems = []
    for before, after in pairwise(pages):
        if site_path(seen[before].next or "", base_url) != after:
            problems.append(f"{before}: 'next' goes to {seen[before].next}, expected {after}")
        if site_path(seen[after].prev or "", base_url) != before:
            problems.append(f"{after}: 'previous' goes to {seen[after].prev}, expected {before}")
    assert not problems, _report(problems)

    context, outside = offline_context(browser)
    try:
        i = min(range(len(pages) - 1), key=lambda i: seen[pages[i]].typeset + seen[pages[i + 1]].typeset)
        page = context.new_page()
        page.goto(base_url + pages[i])
        page.locator(".prev-next-area a.right-next").click()
        page.wait_for_url(f"**/{pages[i + 1]}")
        page.locator(".prev-next-area a.left-prev").click()
        page.wait_for_url(f"**/{pages[i]}")
    finally:
        context.close()
    assert not outside, outside


def test_dark_mode_switch_changes_the_theme(visits, browser, base_url):
    context, outside = offline_context(browser, color_scheme="light")
    try:
        page = context.new_page()
        page.goto(base_url + lightest(visits.pages, visits.visits))
        theme = lambda: page.evaluate("document.documentElement.dataset.theme")  # noqa: E731
        background = lambda: page.evaluate("getComputedStyle(document.body).backgroundColor")  # noqa: E731
        first, first_background = theme(), background()
        assert first == "light", f"a light system scheme should give the light theme, got {first!r}"
        themes = []
        for _ in range(3):  # the button cycles light, dark and the system's setting
            page.locator(".theme-switch-button").first.click()
            themes.append(theme())
            if themes[-1] == "dark":
                break
        assert themes[-1] == "dark", f"clicking the theme switch gave {themes}, never 'dark'"
        assert background() != first_background, "the dark theme did not change the page's background"
        page.reload()
        assert theme() == "dark", "the chosen theme is not remembered across pages"
    finally:
        context.close()
    assert not outside, outside


def test_search_finds_a_chapter_3_term_and_links_to_it(browser, base_url):
    context, outside = offline_context(browser)
    try:
        page = context.new_page()
        page.goto(f"{base_url}search.html?q={SEARCH_TERM}")
        results = page.locator("#search-results ul.search li a")
        page.wait_for_function(
            "() => /Search finished|found|did not match/i"
            ".test(document.querySelector('#search-results')?.innerText ?? '')"
        )
        hrefs = [site_path(urldefrag(h)[0], base_url) for h in results.evaluate_all("links => links.map(a => a.href)")]
        assert SEARCH_TARGET in hrefs, f"searching {SEARCH_TERM!r} did not list {SEARCH_TARGET}; it listed {hrefs}"
        results.nth(hrefs.index(SEARCH_TARGET)).click()
        page.wait_for_url(f"**/{SEARCH_TARGET}*", wait_until="domcontentloaded")
        assert SEARCH_TERM in page.locator("main").inner_text()
    finally:
        context.close()
    assert not outside, outside


def test_launch_buttons_point_at_the_configured_repository(visits):
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    repo_url, branch = config["repository"]["url"].rstrip("/"), config["repository"]["branch"]
    owner_name = urlsplit(repo_url).path.strip("/")
    launch = config["launch_buttons"]
    notebooks = [p for p in visits.pages if p.startswith("notebooks/")]
    assert notebooks
    problems = []
    for path in notebooks:
        v = visits.visits[path]
        ipynb = path.removesuffix(".html") + ".ipynb"
        assert (REPO / ipynb).is_file()
        expected = {
            "colab": f"{launch['colab_url'].rstrip('/')}/github/{owner_name}/blob/{branch}/{ipynb}",
            "binder": f"{launch['binderhub_url'].rstrip('/')}/v2/gh/{owner_name}/{branch}?urlpath=lab/tree/{ipynb}",
        }
        for name, url in expected.items():
            if url not in v.launch:
                problems.append(f"{path}: no {name} launch button to {url}; buttons: {v.launch}")
        hub = [u for u in v.launch if u.startswith(launch["jupyterhub_url"].rstrip("/") + "/")]
        query = parse_qs(urlsplit(hub[0]).query) if hub else {}
        if (query.get("repo") != [repo_url] or query.get("branch") != [branch]
                or not query.get("urlpath", [""])[0].endswith(f"/{ipynb}")):
            problems.append(f"{path}: the JupyterHub button is not a pull of {repo_url} ({branch}) opening {ipynb}: "
                            f"{hub}")
        for url in v.launch:
            if urlsplit(url).scheme != "https":
                problems.append(f"{path}: launch button {url} is not https")
        if repo_url not in v.source or not any(u.startswith(f"{repo_url}/issues/new?") for u in v.source):
            problems.append(f"{path}: repository/issue buttons {v.source} do not point at {repo_url}")
    assert not problems, _report(problems)




def find_phone_overflow(v: Visit) -> list[str]:
    m = v.phone
    if m["pageWidth"] > m["width"] + 1 or m["columnRight"] > m["width"] + 1 or m["over"]:
        return [f"{v.path}: {m['pageWidth']} px wide on a {m['width']} px screen; text column ends at "
                f"{m['columnRight']:.0f} px; overflowing: {m['over']}"]
    return []


def test_phone_width_has_no_horizontal_overflow(visits):
    problems = [p for v in visits.visits.values() for p in find_phone_overflow(v)]
    assert not problems, _report(problems)


# --- bad input: a planted broken page must be caught, naming the page and the element ---------------------------


def test_a_broken_page_is_caught(tmp_path, site, browser, visits):
    """Broken math, a missing image and a dead link on a page planted next to a real one are each reported."""
    real = lightest(visits.pages, visits.visits, with_math=True)  # a page that loads MathJax
    folder = real.rsplit("/", 1)[0]
    planted = tmp_path / "html"
    (planted / folder).mkdir(parents=True)
    for name in ["_static", "_images"]:
        if (site / name).exists():
            (planted / name).symlink_to(site / name)
    page = (site / real).read_text(encoding="utf-8")
    name = real.rsplit("/", 1)[1]
    broken = (
        '<p id="planted">Broken: <span class="math notranslate nohighlight">\\(\\frac{1}{2\\)</span> '
        '<span class="math notranslate nohighlight">\\(\\unknowncommand{x} + 1\\)</span> '
        '<img src="../_images/no-such-figure.png" alt="missing figure"> '
        '<a href="no_such_page.html">dead link</a> <a href="{name}#no-such-anchor">dead anchor</a></p>'
    ).replace("{name}", name)
    assert "<main" in page
    marker = re.search(r'<section[^>]*id="[^"]+"[^>]*>', page)
    (planted / folder / "broken.html").write_text(page[: marker.end()] + broken + page[marker.end():], encoding="utf-8")
    (planted / real).write_text(page, encoding="utf-8")

    context, outside = offline_context(browser)
    with serve(planted) as base:
        try:
            seen = visit_all(context, base, [real, f"{folder}/broken.html"], {})
        finally:
            context.close()
    v = seen[f"{folder}/broken.html"]
    math = find_math_problems(v)
    assert any(f"{folder}/broken.html" in p and "not typeset" in p and "frac{1}{2" in p for p in math), math
    assert any("raw TeX" in p and "frac{1}{2" in p for p in math), math
    assert any("math error" in p and "unknowncommand" in p for p in math), math
    images = find_broken_images(v)
    assert any("no-such-figure.png" in p and f"{folder}/broken.html" in p for p in images), images
    links = find_broken_links(v, planted, base, seen)
    assert any("no_such_page.html" in p and "dead link" in p for p in links), links
    assert any("no-such-anchor" in p for p in links), links
    assert not find_math_problems(seen[real]), "the unbroken page must pass"
