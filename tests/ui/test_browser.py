"""The dashboard in a real browser (Debian's headless Chromium, driven by Playwright): the runs
table, a live curve, a comparison, the playground streaming from tiny adapters, and the run form.

Every page must load without a JavaScript error (console errors and uncaught exceptions fail the test)."""
import json
import os
import time

import pytest

from browser import launch, missing
from conftest import RUN_STEPS, write_live_run

if missing() is not None and os.environ.get("LORAKIT_REQUIRE_BROWSER"):  # CI (.ci/run) installs chromium
    raise RuntimeError(f"LORAKIT_REQUIRE_BROWSER is set, but {missing()}")
pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")

TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def page(browser, ui_server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto_ui = lambda route: page.goto(f"{ui_server}/ui/#{route}")
    yield page
    context.close()
    assert not problems, f"JavaScript errors on the page: {problems}"


def test_runs_table_lists_the_fixture_runs(page):
    page.goto_ui("/runs")
    page.wait_for_selector('tr[data-run="alpha"]')
    status = {r: page.text_content(f'tr[data-run="{r}"] .status') for r in ("alpha", "beta", "live", "broken")}
    assert status == {"alpha": "finished", "beta": "finished", "live": "running", "broken": "failed"}
    assert page.text_content('tr[data-run="alpha"] .steps').strip() == f"{RUN_STEPS} / {RUN_STEPS}"
    assert float(page.text_content('tr[data-run="alpha"] .eval-loss')) > 0
    assert "file not found" in page.get_attribute('tr[data-run="broken"] .status-cell', "title")
    page.click('tr[data-run="beta"] a')  # its page: curves, the config (only its method's section), adapters
    page.wait_for_selector('#run-config tr[data-key="lora.r"]')
    assert page.text_content('#run-config tr[data-key="lora.r"] td') == "8"
    assert page.locator('#run-config tr[data-key="vera.r"]').count() == 0
    assert page.get_attribute('svg[data-chart="loss"] path[data-series="train"]', "data-points") == str(RUN_STEPS)
    assert page.locator('a[href="#/playground?a=beta"]').count() >= 1


def test_loss_curve_updates_when_a_metrics_row_is_appended(page, ui_root):
    run = write_live_run(ui_root / "runs", "growing", rows=3)
    page.goto_ui("/run/growing")
    curve = 'svg[data-chart="loss"] path[data-series="train"]'
    page.wait_for_selector(f'{curve}[data-points="3"]')
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"split": "train", "step": 4, "loss": 0.5, "lr": 1e-3}) + "\n")
        f.write(json.dumps({"split": "eval", "step": 4, "loss": 0.9}) + "\n")
    page.wait_for_selector(f'{curve}[data-points="4"]', timeout=10_000)
    page.wait_for_selector('svg[data-chart="loss"] path[data-series="eval"][data-points="1"]', state="attached")
    assert page.locator('svg[data-chart="loss"] circle').count() >= 1  # a lone eval point is drawn as a marker
    assert page.text_content(".toolbar .status") == "running"


def test_two_runs_overlay_their_curves_and_diff_their_configs(page):
    page.goto_ui("/runs")
    page.check('tr[data-run="alpha"] input[type=checkbox]')
    page.check('tr[data-run="beta"] input[type=checkbox]')
    page.click("#compare-button")
    page.wait_for_selector('svg[data-chart="compare-train"] path[data-series="alpha"]')
    assert page.get_attribute('svg[data-chart="compare-train"] path[data-series="beta"]', "data-points") == str(RUN_STEPS)
    row = page.locator('#config-diff tr[data-key="lora.r"] td')
    assert row.all_text_contents() == ["4", "8"]
    assert page.locator('#config-diff tr[data-key="train.steps"]').count() == 0
    assert page.locator('#compare-finals tr[data-key="eval_loss"] td').count() == 2


def test_playground_streams_from_adapters_and_switching_changes_the_answer(page, ui_root, monkeypatch):
    from lorakit.inference import generate, load_trained
    from lorakit.serve.engine import Engine

    # The tiny model writes a 12-token reply in a few ms, which a loaded machine can hand to the browser
    # in one network read; paced like a real model (~20 tokens/s), each token arrives on its own.
    decode_step = Engine._decode_step
    monkeypatch.setattr(Engine, "_decode_step", lambda self, key: (time.sleep(0.05), decode_step(self, key))[1])

    prompt = "Lunch with Ana on Friday at noon."
    expected = {name: generate(load_trained(ui_root / "runs" / name / "adapter"), prompt, max_new_tokens=12)
                for name in ("alpha", "beta")}
    assert expected["alpha"] != expected["beta"], "the fixture adapters should answer differently"
    page.goto_ui("/playground")
    page.wait_for_selector('#pg-model-a option[value="run:alpha"]', state="attached")
    page.select_option("#pg-model-a", "run:alpha")
    page.check("#pg-compare")
    page.select_option("#pg-model-b", "run:beta")
    page.fill("#pg-max-tokens", "12")
    page.evaluate("""() => { window.__seen = [];  // the reply's text each time the page changes it
        new MutationObserver(() => { const r = document.querySelector('#pg-side-a .msg.assistant');
            if (r) window.__seen.push([r.dataset.done, r.textContent]); })
          .observe(document.querySelector('#pg-side-a .messages'), {childList: true, subtree: true, characterData: true}); }""")
    page.fill("#pg-input", prompt)
    page.click("#pg-send")  # the first message also loads the adapters' base model
    a = page.wait_for_selector('#pg-side-a .msg.assistant[data-done="1"]', timeout=60_000)
    b = page.wait_for_selector('#pg-side-b .msg.assistant[data-done="1"]', timeout=60_000)
    # the reply as streamed keeps its first token's leading space; generate() strips it
    assert a.text_content().strip() == expected["alpha"] and b.text_content().strip() == expected["beta"]
    final = a.text_content()
    partial = [t for done, t in page.evaluate("window.__seen") if done == "0" and 0 < len(t) < len(final)]
    assert len(partial) >= 3 and all(final.startswith(t) for t in partial)  # shown piece by piece as it streamed
    assert "<|im_start|>user\n" + prompt in page.text_content("#pg-prompt-a")
    page.click("#pg-clear")
    page.uncheck("#pg-compare")
    page.select_option("#pg-model-a", "run:beta")  # the same prompt, switched to the other adapter
    page.fill("#pg-input", prompt)
    page.click("#pg-send")
    again = page.wait_for_selector('#pg-side-a .msg.assistant[data-done="1"]', timeout=60_000)
    assert again.text_content().strip() == expected["beta"]


def test_bad_config_field_shows_its_error_beside_it(page):
    page.goto_ui("/new")
    page.select_option("#new-source", "config:tiny.yaml")
    page.wait_for_selector("#new-state.ok")
    assert page.input_value("#new-name") == "tiny"
    page.fill('[data-key="lora.r"] input', "-1")
    page.fill('[data-key="train.lr"] input', "fast")
    page.wait_for_selector('[data-key="lora.r"].invalid')
    assert page.text_content('[data-error-for="lora.r"]') == "Input should be greater than 0"
    assert "valid number" in page.text_content('[data-error-for="train.lr"]')
    assert page.is_disabled("#new-launch")  # nothing launches while a field is invalid
    page.fill('[data-key="lora.r"] input', "2")
    page.fill('[data-key="train.lr"] input', "1e-2")
    page.wait_for_selector("#new-state.ok")
    assert page.text_content('[data-error-for="lora.r"]') == "" and page.is_enabled("#new-launch")


def test_launch_watch_and_stop_a_run_from_the_page(page, ui_root):
    page.goto_ui("/new")
    page.select_option("#new-source", "config:tiny.yaml")
    page.wait_for_selector("#new-state.ok")
    page.fill("#new-name", "from-page")
    page.fill('[data-key="train.steps"] input', "100000")
    page.fill('[data-key="train.save_every"] input', "0")
    page.wait_for_selector("#new-state.ok")
    page.click("#new-launch")
    page.wait_for_url("**/#/run/from-page")
    page.wait_for_selector('svg[data-chart="loss"] path[data-series="train"]', timeout=120_000)  # it trains
    assert page.text_content(".toolbar .status") == "running"
    page.click("#stop-button")
    page.wait_for_selector('.toolbar .status:text-is("stopped")', timeout=30_000)
    record = json.loads((ui_root / "runs" / "from-page" / "launch.json").read_text())
    assert record["stopped"] and record["exit_code"] is not None
