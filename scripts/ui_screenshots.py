"""Screenshots of the dashboard's pages for the README (`docs/ui/*.png`), taken in Debian's headless
chromium (Playwright), against `lorakit ui` serving a runs directory on 127.0.0.1.

    flock /tmp/lorakit-heavy.lock python scripts/ui_screenshots.py --demo   # trains two short SmolLM2 runs first
    python scripts/ui_screenshots.py --runs runs --out docs/ui             # whatever runs are there

`--demo` trains `configs/quickstart.yaml` twice (r=16 and r=4, few steps, a subset evaluated) into
the runs directory unless those runs are already there. The pages shown: the runs table with two
runs selected, one run's curves, their comparison, the playground (the base model and the first
adapter side by side on one calendar note) and the run form with a bad field.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests" / "serve"), str(ROOT / "tests" / "ui")]

DEMO = {
    "notes-r16": ["lora.r=16", "lora.lora_alpha=32", "train.lr=2e-3"],
    "notes-r4": ["lora.r=4", "lora.lora_alpha=8", "train.lr=1e-3"],
}
DEMO_COMMON = ["train.steps=12", "train.eval_every=4", "train.warmup_steps=2", "eval.max_samples=10"]
PROMPT = "Coffee with Tomás on Tuesday at 9am."


def train_demo(runs: Path) -> None:
    for name, overrides in DEMO.items():
        if (runs / name / "adapter").is_dir():
            continue
        command = [sys.executable, "-m", "lorakit", "train", str(ROOT / "configs" / "quickstart.yaml"),
                   *DEMO_COMMON, *overrides, f"output_dir={runs / name}"]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def shoot(runs: Path, out: Path, configs: Path) -> None:
    from playwright.sync_api import sync_playwright

    from browser import launch
    from lorakit.ui.launch import UiOptions, build_ui_app
    from lorakit.ui.runs import RunsDir
    from serve_helpers import running

    finished = [r.id for r in RunsDir(runs).list() if (r.path / "adapter" / "adapter_config.json").is_file()]
    if len(finished) < 2:
        raise SystemExit(f"{runs}: needs two finished runs with adapters (try --demo)")
    first, second = sorted(finished)[:2]
    out.mkdir(parents=True, exist_ok=True)
    app = build_ui_app(UiOptions(runs=str(runs), configs=str(configs), max_model_len=512))
    with running(app) as url, sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.set_default_timeout(300_000)

        def save(name: str) -> None:
            page.wait_for_timeout(400)
            page.screenshot(path=str(out / f"{name}.png"), full_page=True)
            print("wrote", out / f"{name}.png", flush=True)

        page.goto(f"{url}/ui/#/runs")
        page.wait_for_selector(f'tr[data-run="{first}"]')
        page.check(f'tr[data-run="{first}"] input[type=checkbox]')
        page.check(f'tr[data-run="{second}"] input[type=checkbox]')
        save("runs")
        page.goto(f"{url}/ui/#/run/{first}")
        page.wait_for_selector('svg[data-chart="loss"] path[data-series="train"]')
        save("run")
        page.goto(f"{url}/ui/#/compare/{first},{second}")
        page.wait_for_selector("#config-diff tr[data-key]")
        save("compare")
        page.goto(f"{url}/ui/#/playground")
        page.wait_for_selector(f'#pg-model-a option[value="run:{first}"]', state="attached")
        page.select_option("#pg-model-a", "base")
        page.check("#pg-compare")
        page.select_option("#pg-model-b", f"run:{first}")
        page.fill("#pg-max-tokens", "24")
        page.fill("#pg-input", PROMPT)
        page.click("#pg-send")
        page.wait_for_selector('#pg-side-a .msg.assistant[data-done="1"]')
        page.wait_for_selector('#pg-side-b .msg.assistant[data-done="1"]')
        page.click("#pg-side-b details summary")
        save("playground")
        page.goto(f"{url}/ui/#/new")
        page.select_option("#new-source", "config:quickstart.yaml")
        page.wait_for_selector("#new-state.ok")
        page.fill("#new-name", "notes-r32")
        page.fill('[data-key="lora.r"] input', "0")
        page.wait_for_selector('[data-key="lora.r"].invalid')
        save("new-run")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("/tmp/lorakit-ui-demo/runs"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "ui")
    parser.add_argument("--configs", type=Path, default=ROOT / "configs")
    parser.add_argument("--demo", action="store_true", help="train the two demo runs first (SmolLM2, minutes)")
    args = parser.parse_args()
    started = time.monotonic()
    if args.demo:
        train_demo(args.runs)
    shoot(args.runs.resolve(), args.out, args.configs)
    print(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
