"""A generated report in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright's Python package. Checks no JavaScript errors, no network access, every figure drawn,
and that moving a step slider changes what is drawn; saves screenshots.

Skipped when Chromium or Playwright is missing, unless ``MECHGROK_REQUIRE_BROWSER=1`` (CI sets it),
then it fails. Screenshots go to ``$MECHGROK_SCREENSHOT_DIR`` (default: the test's tmp folder).
"""

import os
import shutil
from pathlib import Path

import pytest

from mechgrok import ModelConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig, train
from mechgrok.analysis import analyze
from mechgrok.report import write_run_report

pytestmark = pytest.mark.integration  # a real headless browser

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.fixture(scope="module")
def browser():
    required = os.environ.get("MECHGROK_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            pytest.fail("playwright is not installed (pip install -e '.[test]')")
        pytest.skip("playwright is not installed")
    exe = _chromium()
    if exe is None:
        if required:
            pytest.fail("no chromium executable (apt-get install chromium)")
        pytest.skip("no chromium executable")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def shot_dir(tmp_path):
    d = Path(os.environ.get("MECHGROK_SCREENSHOT_DIR", tmp_path))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _open(browser, report: Path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    remote: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)

    def route(r):
        if r.request.url.startswith(("file:", "data:", "blob:")):
            r.continue_()
        else:  # the report must work offline: any other request is a bug
            remote.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(report.as_uri(), wait_until="load")
    n_figs = report.read_text().count('class="plotly-graph-div"')
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {n_figs}", timeout=60_000)
    page.wait_for_timeout(500)
    return page, errors, remote, n_figs


def _check_all_drawn(page, n_figs):
    drawn = page.evaluate(
        """() => Array.from(document.querySelectorAll('.plotly-graph-div')).map(gd => ({
            id: gd.id,
            plotted: gd.classList.contains('js-plotly-plot') && !!gd._fullLayout,
            traces: gd.querySelectorAll('g.trace, g.hm, g.imagelayer image').length,
            width: gd.getBoundingClientRect().width,
            height: gd.getBoundingClientRect().height,
        }))"""
    )
    assert len(drawn) == n_figs
    for fig in drawn:
        assert fig["plotted"] and fig["traces"] > 0, fig
        assert fig["width"] > 300 and fig["height"] > 200, fig


def _drag_slider(page, fig_id: str, fraction: float) -> None:
    """Click the slider rail of figure ``fig_id`` at ``fraction`` of its length (a real mouse click)."""
    page.locator(f"#{fig_id}").scroll_into_view_if_needed()
    rail = page.locator(f"#{fig_id} .slider-rail-rect").first
    box = rail.bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + fraction * box["width"], box["y"] + box["height"] / 2)
    page.wait_for_timeout(800)


def _state(page, fig_id: str) -> dict:
    return page.evaluate(
        f"""() => {{
            const gd = document.getElementById('{fig_id}');
            const img = gd.querySelector('g.hm image');
            const pts = Array.from(gd.querySelectorAll('g.scatterlayer .point'))
                .slice(0, 8).map(p => p.getAttribute('transform'));
            return {{
                active: gd.layout.sliders[0].active,
                label: gd.querySelector('.slider-group > text.slider-label').textContent,
                image: img ? img.getAttribute('href') : null,
                points: pts.join(';'),
            }};
        }}"""
    )


def _train_and_report(cfg: RunConfig, tmp_path: Path) -> Path:
    run_dir = tmp_path / cfg.name
    train(cfg, run_dir, progress=False)
    analyze(run_dir)
    return write_run_report(run_dir, max_frames=20)


def test_parity_report_in_browser(browser, tiny_parity, tmp_path, shot_dir):
    report = _train_and_report(tiny_parity, tmp_path)
    page, errors, remote, n_figs = _open(browser, report)
    assert n_figs == 5  # curves, weights, bits, prune-now, numerical stability
    _check_all_drawn(page, n_figs)
    before = _state(page, "fig-weights")
    assert before["image"] and before["image"].startswith("data:image")
    _drag_slider(page, "fig-weights", 0.1)
    after = _state(page, "fig-weights")
    assert after["active"] != before["active"] and after["label"] != before["label"]
    assert after["image"] != before["image"], "moving the step slider did not change the heatmap"
    page.locator("#fig-weights").screenshot(path=str(shot_dir / "parity_weights_slider.png"))
    page.screenshot(path=str(shot_dir / "parity_report.png"), full_page=True)
    assert errors == [] and remote == []
    page.close()


def test_circle_report_in_browser(browser, tmp_path, shot_dir):
    cfg = RunConfig(
        name="tiny-cossin",
        task=TaskConfig(kind="modular", p=11, pairs="unordered", format="pairs", train_fraction=0.6),
        model=ModelConfig(kind="cossin_mlp", d_mlp=5, frequency=1),
        optim=OptimConfig(lr=1e-2, weight_decay=1e-3),
        train=TrainConfig(steps=150, checkpoint_every=25, log_checkpoints=8, resume_every=100),
    )
    report = _train_and_report(cfg, tmp_path)
    page, errors, remote, n_figs = _open(browser, report)
    _check_all_drawn(page, n_figs)
    assert page.locator("#fig-circles").count() == 1
    before = _state(page, "fig-circles")
    _drag_slider(page, "fig-circles", 0.05)
    after = _state(page, "fig-circles")
    assert after["active"] != before["active"]
    assert after["points"] != before["points"], "moving the step slider did not move the neurons"
    page.locator("#fig-circles").screenshot(path=str(shot_dir / "circles_slider.png"))
    page.screenshot(path=str(shot_dir / "circle_report.png"), full_page=True)
    assert errors == [] and remote == []
    page.close()
