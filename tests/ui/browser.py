"""Headless Chromium for the dashboard tests and screenshots: Debian's `chromium` driven by Playwright.

Chromium gets a fresh profile (Playwright makes one per launch) and the flags that keep it off the
network: no sandbox (CI runs as root), no GPU, no QUIC, no first-run, background, component-update
or sync traffic."""
import os
import shutil

CHROMIUM = os.environ.get("LORAKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions"]


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; scripts/setup.sh does)"
    if not os.path.isfile(CHROMIUM) or not os.access(CHROMIUM, os.X_OK):
        return f"no chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)"
    return None


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
