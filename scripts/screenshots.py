#!/usr/bin/env python3
"""Screenshots of the dashboard for the README: builds the demo store of the browser
tests (tests/helpers/web.py) in a temporary directory, runs `ckptfs serve` on it, and
saves one PNG per page into docs/images/ with headless chromium.

    scripts/screenshots.py [OUTDIR]      # default: docs/images

Needs the web and test extras (selenium) and Debian's chromium and chromium-driver
(scripts/bootstrap installs them).
"""
import os
import shutil
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, "src"), REPO]

from tests.helpers.web import build_store, chromium, serving  # noqa: E402

PAGES = [  # (file name, path, what must be on the page before the picture)
    ("dashboard-projects.png", "/", "section.project"),
    ("dashboard-run.png", "/p/nlp/base?compare=sweep-lr", "svg.metric-chart"),
    ("dashboard-lineage.png", "/lineage", "#lineage-graph"),
    ("dashboard-version.png", "/p/nlp/base/best", "#metrics"),
    ("dashboard-diff.png", "/diff?a=nlp/base/step-400&b=nlp/base/step-500", "#diff-metrics"),
    ("dashboard-storage.png", "/storage", "#storage-projects"),
    ("dashboard-health.png", "/health", "#audit"),
]


def main() -> None:
    from selenium.webdriver.common.by import By
    outdir = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "docs", "images"))
    os.makedirs(outdir, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="ckptfs-screenshots-")
    try:
        store = build_store(os.path.join(scratch, "store"), enforce=False).path
        with serving(store) as address:
            driver = chromium()
            try:
                driver.set_window_size(1280, 900)
                for name, path, ready in PAGES:
                    driver.get(address + path)
                    driver.find_element(By.CSS_SELECTOR, ready)
                    driver.save_screenshot(os.path.join(outdir, name))
                    print(os.path.join(outdir, name))
            finally:
                driver.quit()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
