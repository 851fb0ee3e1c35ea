"""`dvc plots show` and `dvc plots diff` draw every chart offline: .dvc/config points DVC at a page with Vega inlined."""

import configparser
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from project import copy_of, dvc

VEGA_CHARTS = 4  # dvc.yaml's plots: loss, accuracy, confusion matrix, ROC curve
IMAGES = 3  # confusion.png, roc.png, training_curves.png
CDN_SCRIPT = re.compile(r'src="https://cdn\.jsdelivr\.net/npm/(vega(?:-lite|-embed)?)@([0-9.]+)"')
REMOTE = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.IGNORECASE)


def template_path() -> Path:
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / ".dvc" / "config")
    return REPO_ROOT / ".dvc" / config["plots"]["html_template"]  # DVC reads it relative to .dvc/


def test_the_plots_page_inlines_the_vega_versions_dvc_loads_with_their_licenses():
    from dvc_render.vega import VegaRenderer

    page = template_path().read_text(encoding="utf-8")
    wanted = CDN_SCRIPT.findall(VegaRenderer.SCRIPTS)
    assert [name for name, _ in wanted] == ["vega", "vega-lite", "vega-embed"], VegaRenderer.SCRIPTS
    for name, version in wanted:  # a DVC upgrade that moves them: run scripts/vendor-vega again
        assert f"/*! {name} {version} (BSD-3-Clause)" in page, f"{name} {version} is not inlined: run scripts/vendor-vega"
        assert (template_path().parent / "licenses" / f"{name}.LICENSE").is_file()
    assert page.count("Redistribution and use in source and binary forms") == 3
    assert page.count("<script>") == page.count("</script>") == 3
    assert "{plot_divs}" in page and "{refresh_tag}" in page
    assert "{scripts}" not in page, "DVC would put its CDN script tags there"
    assert not REMOTE.search(page)
    assert len(page.encode()) < 2 * 2**20


def chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def rendered_dom(page: Path) -> str:
    """The page's DOM after headless Chromium ran its scripts, with every network request refused."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", f"--user-data-dir={profile}",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",  # offline: no name, no route
             "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def charts_drawn(dom: str) -> int:
    """Vega charts drawn: vega-embed gives each its wrapper and a canvas (its default renderer)."""
    return len(re.findall(r'<canvas\b[^>]*class="marks"', dom))


@pytest.fixture(scope="module")
def pages(trained_project, tmp_path_factory) -> dict[str, Path]:
    """The index.html of `dvc plots show`, `dvc plots diff` and of show with DVC's own page, in a copy of the tiny project."""
    root = copy_of(trained_project[0], tmp_path_factory.mktemp("plots") / "project")
    from dvc_render.html import PAGE_HTML

    dvc_default = root.parent / "dvc-default.html"
    dvc_default.write_text(PAGE_HTML, encoding="utf-8")
    dvc(root, "plots", "show", "-o", "shown")
    dvc(root, "plots", "diff", "-o", "diffed")  # the workspace against HEAD, which has no plots files
    dvc(root, "plots", "show", "-o", "cdn", "--html-template", str(dvc_default))
    return {name: root / name / "index.html" for name in ("shown", "diffed", "cdn")}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shown", "diffed"])
def test_the_plots_pages_load_nothing_from_the_network(pages, name):
    page = pages[name].read_text(encoding="utf-8")
    assert page.count("vegaEmbed(") == VEGA_CHARTS
    assert len(re.findall(r'<img src="static/', page)) == IMAGES  # copied beside the page
    assert not REMOTE.search(page), REMOTE.search(page)
    # the check above can fail: DVC's own page loads Vega from its CDN
    assert REMOTE.search(pages["cdn"].read_text(encoding="utf-8"))


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (apt-get install chromium): "
                                                "only the pages' script references are checked")
def test_every_chart_draws_in_a_browser_offline(pages):
    for name in ("shown", "diffed"):
        assert charts_drawn(rendered_dom(pages[name])) == VEGA_CHARTS, name
    assert charts_drawn(rendered_dom(pages["cdn"])) == 0  # DVC's own page, offline, draws none of them
