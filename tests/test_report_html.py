"""The HTML view of a report: self-contained, hostile text escaped, and what a browser shows."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from scan_helpers import run_cli

from distillmark.verify.report import read_report
from distillmark.verify.report_html import render_html

HOSTILE = ('<script>alert("x")</script> "><img src=x onerror=alert(1)> </div></span>'
           "<style>body{display:none}</style> &amp; ]]> <!-- ")


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory: pytest.TempPathFactory, key_file: Path,
                   marked: list[str]) -> tuple[Path, Path, str]:
    d = tmp_path_factory.mktemp("html")
    text = marked[4] + "\n" + HOSTILE + "\n" + marked[5]
    src = d / "hostile <b>name<b>.txt"
    src.write_text(text, encoding="utf-8")
    report, page = d / "r.json", d / "r.html"
    r = run_cli("detect", "-k", key_file, src, "--report", report, "--html", page,
                "--prompt", "<i>prompt</i>")
    assert r.exit_code == 0, r.stderr
    return report, page, text


ELEMENTS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "table",
            "tr", "th", "td", "div", "span", "svg", "line", "text", "polyline"}


def shown_text(page: str) -> str:
    """The tokens' text as a reader sees it: the text block without its spans, unescaped."""
    block = re.search(r'<div class="text">(.*?)</div>', page, flags=re.DOTALL)
    assert block is not None
    return html.unescape(re.sub(r"<span [^>]*>|</span>", "", block.group(1)))


def test_hostile_text_is_escaped(hostile_report: tuple[Path, Path, str]) -> None:
    _, page_path, text = hostile_report
    page = page_path.read_text(encoding="utf-8")
    # the page's own elements only: nothing of the text became markup
    assert set(re.findall(r"<([a-zA-Z][a-zA-Z0-9]*)", page)) <= ELEMENTS
    assert "<b>name" not in page and "&lt;b&gt;name" in page
    assert shown_text(page) == "<i>prompt</i>" + text
    # self-contained: nothing fetched (the only URL is the SVG namespace)
    assert re.findall(r"(?:src|href)=", page) == []
    assert re.findall(r"https?://[^\"']+", page) == ["http://www.w3.org/2000/svg"]
    assert "<svg" in page and "<polyline" in page


def test_report_html_command_gives_the_same_page(tmp_path: Path,
                                                 hostile_report: tuple[Path, Path, str]) -> None:
    report, page, _ = hostile_report
    out = tmp_path / "v.html"
    assert run_cli("report", "html", report, "--out", out).exit_code == 0
    assert out.read_text(encoding="utf-8") == page.read_text(encoding="utf-8")
    assert run_cli("report", "html", tmp_path / "none.json", "--out", out).exit_code == 2


def test_every_status_gets_its_class(hostile_report: tuple[Path, Path, str]) -> None:
    report, _, _ = hostile_report
    page = render_html(read_report(report))
    for cls in ("green", "notgreen", "repeated", "unscored"):
        assert f'<span class="{cls}">' in page


def test_scan_report_renders_without_details(tmp_path: Path) -> None:
    page = render_html({"command": "scan", "test": {"decision": "<x>", "alpha": 0.001},
                        "inputs": [{"name": "<a>", "sha256": "0", "size": 1}]})
    assert "&lt;x&gt;" in page and "&lt;a&gt;" in page and "<svg" not in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian "
                    "package chromium): the browser check needs it")
def test_a_browser_shows_the_text_and_runs_nothing(
        tmp_path: Path, hostile_report: tuple[Path, Path, str]) -> None:
    _, page, _ = hostile_report
    assert CHROMIUM is not None
    base = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    # the browser parsed the hostile text as text: it is in the DOM, and no element of it
    assert set(re.findall(r"<([a-zA-Z][a-zA-Z0-9]*)", dom)) <= ELEMENTS | {"tbody"}  # (implied)
    assert HOSTILE in shown_text(dom)
    assert dom.count('class="green"') > 10 and "Running log10 p-value" in dom
    shot = tmp_path / "page.png"
    subprocess.run([*base, "--window-size=1000,1400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
