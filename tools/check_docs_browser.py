"""Check the built documentation in a real browser (headless chromium through selenium) and crawl its links.

    python tools/check_docs_browser.py docs/_build/html --screenshots docs/_build/screenshots

The site is served over HTTP from a local port, as a documentation host would serve it. Three pages (the home page,
the API page of ``storm.tl.embed`` and the quickstart tutorial) must each render a non-empty article, load every
image (``naturalWidth > 0``; the tutorial at least one figure) and log no console error; a screenshot of each is
written. Every ``href`` and ``src`` of every built page that points inside the site must reach a file, and its
``#fragment`` an id of that file. Finally the site must hold a page with at least one figure per tutorial and figure
notebook, and one API page per public name of storm's modules.
Exits 1 with one line per failure. Uses Debian's ``chromium`` and ``chromedriver`` (``make docs-browser``).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import shutil
import sys
import threading
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))  # the docs' own extensions: which pages the site must hold
#: (name of the screenshot, page, whether the page must show a figure)
PAGES = [
    ("home", "index.html", False),
    ("api_tl_embed", "api/generated/storm.tl.embed.html", False),
    ("tutorial_quickstart", "tutorials/01_quickstart.html", True),
]
PAGE_TIMEOUT_S = 60

# Runs in the page: the article's text length and each image's source, natural width and load state.
_PAGE_STATE_JS = """
const article = document.querySelector('article') || document.querySelector('main');
return {
  text: article ? article.innerText.trim().length : 0,
  images: Array.from(document.images).map(i => [i.currentSrc || i.src, i.naturalWidth, i.complete]),
};
"""

_FIRST_FIGURE_JS = "const f = document.querySelector('.cell_output img'); if (f) f.scrollIntoView({block: 'center'});"


class _Links(HTMLParser):
    """The ids of a page, the targets of its ``href`` and ``src`` attributes and the sources of its images."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.targets: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images += [value for key, value in attrs if key == "src" and value]
        for key, value in attrs:
            if key in ("id", "name") and value:
                self.ids.add(value)
            elif key in ("href", "src") and value and not (tag == "link" and ("rel", "preconnect") in attrs):
                self.targets.append(value)


def built_pages(site: Path) -> list[Path]:
    """Return the HTML pages of the built site: every ``.html`` file but the themes' Jinja macros in ``_static/``.

    Parameters
    ----------
    site
        The HTML output folder.

    Returns
    -------
    The pages, sorted.
    """
    return sorted(p for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts)


def _parse(page: Path) -> _Links:
    links = _Links()
    links.feed(page.read_text(encoding="utf-8", errors="replace"))
    return links


def broken_links(site: Path) -> list[str]:
    """Return every internal link of the built site that reaches no file, or no id of its file.

    Parameters
    ----------
    site
        The HTML output folder.

    Returns
    -------
    One ``"page: target"`` line per broken link.
    """
    parsed = {page.resolve(): _parse(page) for page in built_pages(site)}
    broken = []
    for page, links in parsed.items():
        for target in links.targets:
            url = urlsplit(target)
            if url.scheme or url.netloc or target.startswith(("mailto:", "javascript:", "data:")):
                continue  # external: not this site's to check (and not reachable offline)
            path = (page.parent / unquote(url.path)).resolve() if url.path else page
            if path.is_dir():
                path = path / "index.html"
            if not path.is_file():
                broken.append(f"{page.relative_to(site.resolve())}: {target} (no such file)")
            elif url.fragment and path in parsed and unquote(url.fragment) not in parsed[path].ids:
                broken.append(f"{page.relative_to(site.resolve())}: {target} (no such anchor)")
    return broken


def notebook_figure_errors(site: Path) -> list[str]:
    """Return a line per tutorial or figure notebook whose page is missing or shows no figure.

    Parameters
    ----------
    site
        The HTML output folder.

    Returns
    -------
    The failures (empty when each notebook has a page with at least one image of its outputs).
    """
    from quick_notebooks import NOTEBOOKS
    from storm_notebooks import PAGES

    errors = []
    for notebook in NOTEBOOKS:
        page = site / PAGES[notebook.parent.name] / f"{notebook.stem}.html"
        if not page.is_file():
            errors.append(f"{notebook.parent.name}/{notebook.name}: no page {page.relative_to(site)}")
        elif not any("_images/" in src for src in _parse(page).images):
            errors.append(f"{page.relative_to(site)}: no figure")
    return errors


def api_page_count_errors(site: Path) -> list[str]:
    """Return a line per module whose public names and API pages differ.

    Parameters
    ----------
    site
        The HTML output folder.

    Returns
    -------
    The differences (empty when every public name has its page and no page lacks a name).
    """
    from storm_api import SECTIONS

    errors = []
    for module in SECTIONS:
        public = {f"storm.{module}.{n}" for n in importlib.import_module(f"storm.{module}").__all__}
        pages = {p.stem for p in (site / "api" / "generated").glob(f"storm.{module}.*.html")}
        pages = {p for p in pages if p.count(".") == 2}  # storm.<module>.<name>, not a method's own page
        if public != pages:
            errors.append(f"storm.{module}: no page for {sorted(public - pages)}; no name for {sorted(pages - public)}")
    return errors


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        raise SystemExit("chromium and chromedriver are needed: `make docs-browser` installs Debian's packages.")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def check_pages(base_url: str, screenshots: Path) -> list[str]:
    """Load each page of :data:`PAGES` in headless chromium; return one line per failure.

    Parameters
    ----------
    base_url
        Where the site is served, ending in ``/``.
    screenshots
        Folder of the screenshots (``<name>.png``).

    Returns
    -------
    The failures: an empty article, an image that did not load, a console error.
    """
    from selenium.webdriver.support.ui import WebDriverWait

    screenshots.mkdir(parents=True, exist_ok=True)
    failures = []
    driver = _driver()
    try:
        driver.set_page_load_timeout(PAGE_TIMEOUT_S)
        for name, page, needs_figure in PAGES:
            driver.get(base_url + page)
            WebDriverWait(driver, PAGE_TIMEOUT_S).until(
                lambda d: d.execute_script("return document.readyState") == "complete"
            )
            # Images below the fold may load lazily: scroll through the page so that each one is requested.
            driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
            WebDriverWait(driver, PAGE_TIMEOUT_S).until(
                lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)")
            )
            driver.execute_script("window.scrollTo(0, 0)")
            state = driver.execute_script(_PAGE_STATE_JS)
            errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            if needs_figure:  # the screenshot shows the page's first figure rather than its title
                driver.execute_script(_FIRST_FIGURE_JS)
            driver.save_screenshot(str(screenshots / f"{name}.png"))
            loaded = [src for src, width, complete in state["images"] if complete and width > 0]
            print(f"{page}: article {state['text']} characters, {len(loaded)}/{len(state['images'])} images loaded")
            if state["text"] < 200:
                failures.append(f"{page}: the article is empty ({state['text']} characters)")
            failures += [f"{page}: image {src} did not load" for src, w, c in state["images"] if not (c and w > 0)]
            if needs_figure and not loaded:
                failures.append(f"{page}: no figure")
            failures += [f"{page}: console error: {message}" for message in errors]
    finally:
        driver.quit()
    return failures


def _serve(site: Path) -> ThreadingHTTPServer:
    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, format, *args):  # the base class writes each request to stderr
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    """Command line: check the site; print each failure; return 1 if there is one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="the HTML output folder (docs/_build/html)")
    parser.add_argument("--screenshots", type=Path, required=True, help="folder of the screenshots")
    args = parser.parse_args(argv)
    if not (args.site / "index.html").is_file():
        parser.error(f"{args.site} has no index.html: build the site first (`make docs`).")
    failures = broken_links(args.site) + notebook_figure_errors(args.site) + api_page_count_errors(args.site)
    server = _serve(args.site)
    try:
        failures += check_pages(f"http://127.0.0.1:{server.server_address[1]}/", args.screenshots)
    finally:
        server.shutdown()
    for line in failures:
        print(f"FAILED {line}")
    pages = len(built_pages(args.site))
    print(f"{len(failures)} failure(s); {pages} pages crawled; screenshots in {args.screenshots}/")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
