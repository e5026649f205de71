"""The /ui pages in headless Chromium (Debian's package, driven by Playwright) on live uvicorn.

No browser is downloaded: Playwright launches /usr/bin/chromium. JavaScript is off in the
browser context, which proves the pages need none.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import Engine

from chartkit import random_walk_bars
from gateway.app import create_app
from gateway.settings import Settings
from tests.faults import RecordingProxy
from tests.servers import LiveServer
from tests.support import UI, lineage_settings, make_run

CHROMIUM = os.environ.get("GATEWAY_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}

pytestmark = pytest.mark.mlflow


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; .ci/run installs Debian's chromium package")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"  # the pages' SQL is covered in test_ui


@pytest.fixture
def site(settings: Settings, engine: Engine, mlflow_proxy: RecordingProxy) -> Iterator[LiveServer]:
    with LiveServer(create_app(lineage_settings(settings, mlflow_proxy.url))) as server:
        yield server


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(java_script_enabled=False, viewport=DESKTOP)
    yield context.new_page()
    context.close()


def images_loaded(page: Any) -> list[tuple[str, bool, int]]:
    # Evaluated by Playwright in the page's utility world: works with page JavaScript off.
    return [
        (
            img.get_attribute("src"),
            img.evaluate("i => i.complete"),
            img.evaluate("i => i.naturalWidth"),
        )
        for img in page.locator("img").all()
    ]


def contrast_problems(page: Any, selector: str) -> list[str]:
    """Elements under `selector` whose text contrast is below WCAG AA (4.5:1)."""
    script = """
    els => {
      const lum = c => {
        const [r, g, b] = c.match(/[0-9.]+/g).slice(0, 3).map(Number).map(v => {
          v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
        return 0.2126 * r + 0.7152 * g + 0.0722 * b;
      };
      const background = el => {
        for (let e = el; e; e = e.parentElement) {
          const bg = getComputedStyle(e).backgroundColor;
          if (bg && !bg.startsWith('rgba(0, 0, 0, 0)') && bg !== 'transparent') return bg;
        }
        return 'rgb(255, 255, 255)';
      };
      return els.filter(e => e.textContent.trim()).map(e => {
        const [a, b] = [lum(getComputedStyle(e).color), lum(background(e))];
        return [e.textContent.trim(), (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)];
      }).filter(([, ratio]) => ratio < 4.5).map(([text, ratio]) => `${text}: ${ratio.toFixed(2)}`);
    }
    """
    problems: list[str] = page.locator(selector).evaluate_all(script)
    return problems


def test_list_and_legacy_detail_show_the_hydrated_run_and_load_every_image(
    site: LiveServer,
    page: Any,
    insert: Callable[..., int],
    mlflow: MlflowClient,
    experiment: str,
    tmp_path: Path,
) -> None:
    run_id = make_run(mlflow, experiment, workflow_id="wf-browser")
    legacy = insert(
        name="legacy chart",
        symbol="AAPL",
        workflow_id="wf-browser",
        meta={"market_data_snapshot": random_walk_bars(150, seed=8)},
        chart_data={"minio_url": "s3://charts/AAPL/wf-browser/chart.png"},
    )
    insert(name="linked signal", artifact_type="signal", run_id="a" * 32, experiment_id="3")
    insert(name="orphan llm", artifact_type="llm", meta={"text": "no lineage here"})

    page.goto(f"{site.url}/ui/artifacts")
    assert page.title().startswith("Artifacts")
    rows = page.locator("tbody tr")
    assert rows.count() == 3
    legacy_row = rows.filter(has_text="legacy chart")
    assert legacy_row.locator(".badge").inner_text() == "hydrated"
    assert rows.filter(has_text="linked signal").locator(".badge").inner_text() == "stored"
    assert "2 artifacts still missing lineage" in page.locator("#missing-count").inner_text()
    assert contrast_problems(page, ".badge, th, td, label, .summary, button") == []
    page.screenshot(path=tmp_path / "list.png", full_page=True)

    # Filtering is a plain GET form: it works with JavaScript off.
    page.get_by_label("Type").select_option("chart")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/ui/artifacts?type=chart&symbol=&workflow=")
    assert page.locator("tbody tr").count() == 1

    legacy_row = page.locator("tbody tr").filter(has_text="legacy chart")
    legacy_row.get_by_role("link", name="legacy chart").click()
    page.wait_for_url(f"**/ui/artifacts/{legacy}")
    assert page.locator("#run-id").inner_text() == run_id
    assert page.locator("#experiment-id").inner_text() == experiment
    run_link = page.get_by_role("link", name="View run in MLflow")
    assert run_link.get_attribute("href") == f"{UI}/#/experiments/{experiment}/runs/{run_id}"
    assert page.get_by_role("link", name="View experiment").get_attribute("href") == (
        f"{UI}/#/experiments/{experiment}"
    )
    loaded = images_loaded(page)
    assert loaded == [(f"/api/artifacts/{legacy}/image", True, 1200)]
    assert page.locator("img").get_attribute("alt")
    assert page.locator("#bar-count").inner_text() == "150"
    assert contrast_problems(page, ".banner dt, .banner dd, .badge, figcaption, a") == []
    page.screenshot(path=tmp_path / "detail.png", full_page=True)

    # Compare view: the stored object is missing (no MinIO here), the regenerated side loads.
    page.get_by_role("link", name="Compare the stored chart with the regenerated one").click()
    page.wait_for_url(f"**/ui/artifacts/{legacy}/compare")
    assert images_loaded(page) == [
        (f"/api/artifacts/{legacy}/image?source=regenerated", True, 1200)
    ]
    assert "Not available" in page.locator(".compare").inner_text()
    page.screenshot(path=tmp_path / "compare.png", full_page=True)

    for name in ("list.png", "detail.png", "compare.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_pages_fit_a_phone_screen(
    site: LiveServer, browser: Any, insert: Callable[..., int], tmp_path: Path
) -> None:
    chart = insert(
        name="a chart with a rather long name to wrap on a narrow screen " * 2,
        symbol="MSFT",
        workflow_id="workflow-with-a-long-identifier-" + "x" * 40,
        meta={"market_data_snapshot": random_walk_bars(90, seed=2)},
    )
    context = browser.new_context(java_script_enabled=False, viewport=PHONE)
    phone = context.new_page()
    try:
        for path, shot in (
            (f"/ui/artifacts/{chart}", "phone-detail.png"),
            (f"/ui/artifacts/{chart}/compare", "phone-compare.png"),
        ):
            phone.goto(f"{site.url}{path}")
            # Nothing is wider than the screen: no sideways scrolling of the page.
            width = phone.locator("html").evaluate("e => e.scrollWidth")
            assert width <= PHONE["width"], f"{path} is {width} px wide"
            for src, complete, natural in images_loaded(phone):
                assert complete, src
                assert natural > 0, src
                box = phone.locator(f'img[src="{src}"]').bounding_box()
                assert box is not None
                assert box["width"] <= PHONE["width"]
            phone.screenshot(path=tmp_path / shot, full_page=True)
        # The list's table scrolls inside its own box; the page itself does not.
        phone.goto(f"{site.url}/ui/artifacts")
        assert phone.locator("html").evaluate("e => e.scrollWidth") <= PHONE["width"]
        phone.screenshot(path=tmp_path / "phone-list.png", full_page=True)
    finally:
        context.close()
    assert (tmp_path / "phone-detail.png").stat().st_size > 0


def test_run_and_workflow_pages_show_the_run_what_it_made_and_lineage_health(
    site: LiveServer,
    page: Any,
    browser: Any,
    insert: Callable[..., int],
    mlflow: MlflowClient,
    experiment: str,
    tmp_path: Path,
) -> None:
    wf = "wf-browser-runs"
    run = mlflow.create_run(experiment, tags={"workflow_id": wf}, run_name="nightly <b>fit</b>")
    run_id = str(run.info.run_id)
    mlflow.log_param(run_id, "window", "20")
    mlflow.log_metric(run_id, "sharpe", 1.75, step=3)
    mlflow.set_terminated(run_id)
    chart = insert(
        name="legacy chart",
        symbol="AAPL",
        workflow_id=wf,
        meta={"market_data_snapshot": random_walk_bars(60, seed=4)},
    )
    insert(
        name="stored signal",
        artifact_type="signal",
        workflow_id=wf,
        run_id=run_id,
        experiment_id=experiment,
    )

    page.goto(f"{site.url}/ui/artifacts/{chart}")
    assert page.locator("#run-name").inner_text() == "nightly <b>fit</b>"  # text, not markup
    assert page.locator("#run-status").inner_text() == "FINISHED"
    params = page.locator("#run-params tbody tr")
    assert params.all_inner_texts() == ["window\t20"]
    assert page.locator("#run-metrics tbody tr").all_inner_texts() == ["sharpe\t1.75\t3"]
    assert contrast_problems(page, "#run dt, #run dd, #run td, #run th, #run a") == []

    page.get_by_role("link", name="Everything this run produced").click()
    page.wait_for_url(f"**/ui/runs/{run_id}")
    produced = page.locator("#produced tbody tr")
    assert [row.locator("td").nth(1).inner_text() for row in produced.all()] == [
        "legacy chart",
        "stored signal",
    ]
    page.screenshot(path=tmp_path / "run.png", full_page=True)

    page.get_by_role("link", name="Its workflow").click()
    page.wait_for_url(f"**/ui/workflows/{wf}")
    assert page.locator("#artifact-count").inner_text() == "2"
    assert page.locator("#missing-lineage").inner_text() == "1"
    assert page.locator("#completeness").inner_text() == "50.0%"
    assert page.locator("#runs tbody tr").count() == 1
    assert contrast_problems(page, ".banner dt, .banner dd, td, th, .status") == []
    page.screenshot(path=tmp_path / "workflow.png", full_page=True)

    context = browser.new_context(java_script_enabled=False, viewport=PHONE)
    phone = context.new_page()
    try:
        for path in (f"/ui/runs/{run_id}", f"/ui/workflows/{wf}", f"/ui/artifacts/{chart}"):
            phone.goto(f"{site.url}{path}")
            width = phone.locator("html").evaluate("e => e.scrollWidth")
            assert width <= PHONE["width"], f"{path} is {width} px wide"
    finally:
        context.close()
    assert (tmp_path / "run.png").read_bytes().startswith(b"\x89PNG")
