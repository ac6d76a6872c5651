"""Checking an HTML report in a real browser: headless Chromium (no network) renders the page,
and the drawn plots and the front's colours are counted. Used by the tests and
``benchmarks/report.py``."""

from __future__ import annotations

import re
from pathlib import Path

from nas.errors import NasError
from nas.html_report import FRONT, INFEASIBLE


def find_chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser_check(
    path: Path, screenshot: Path, width: int = 1400, height: int = 2600
) -> dict[str, int]:
    """Open ``path`` in headless chromium (no network needed): how many plots the page's script
    found drawn, and how many screenshot pixels have the front's and the infeasible trials'
    colours. Used by the tests and ``benchmarks/report.py``; NasError without chromium."""
    import subprocess

    import matplotlib.image

    exe = find_chromium()
    if exe is None:
        raise NasError("chromium is not installed; as root run 'apt-get install chromium'")
    base = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
    ]
    url = Path(path).resolve().as_uri()
    dom = subprocess.run(
        [*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    subprocess.run(
        [*base, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True
    )
    img = matplotlib.image.imread(str(screenshot))[..., :3]

    def pixels(hex_color: str) -> int:
        rgb = [int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        return int((abs(img - rgb).max(axis=-1) < 0.06).sum())

    drawn = re.search(r'data-plots-drawn="(\d+)"', dom)
    return {
        "plots": dom.count('<svg class="plot"'),
        "plots_drawn": int(drawn.group(1)) if drawn else 0,
        "front_pixels": pixels(FRONT),
        "infeasible_pixels": pixels(INFEASIBLE),
        "screenshot_height": int(img.shape[0]),
        "screenshot_width": int(img.shape[1]),
    }
