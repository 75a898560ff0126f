"""Render an HTML report to PNG with headless Chromium, to look at it as a reviewer would.

    .venv/bin/python scripts/screenshot_report.py demo_out/calibration/audit.html audit.png [--width 1280] [--height 2400]

With ``--height 0`` the height is estimated from the page (a first render at a tall window,
then trimmed at the last non-white row), so a long report fits in one image.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM = os.environ.get("TRUSTMAP_CHROMIUM", "/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)
MAX_AUTO_HEIGHT = 16000


def screenshot(
    html: str | os.PathLike,
    png: str | os.PathLike,
    width: int = 1280,
    height: int = 2400,
    timeout: float = 120.0,
) -> Path:
    """Render ``html`` at ``width`` x ``height`` CSS pixels into ``png``; raise with Chromium's output."""
    src, dst = Path(html).resolve(), Path(png).resolve()
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such HTML file")
    if shutil.which(CHROMIUM) is None:
        raise FileNotFoundError(f"{CHROMIUM}: Chromium not found (set TRUSTMAP_CHROMIUM)")
    auto = height <= 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="trustmap-chromium-") as profile:
        tmp_png = Path(profile) / "shot.png"
        cmd = [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={profile}/p",
            f"--screenshot={tmp_png}",
            f"--window-size={width},{MAX_AUTO_HEIGHT if auto else height}",
            src.as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not tmp_png.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"chromium failed (exit {proc.returncode}): {' | '.join(tail)}")
        img = Image.open(tmp_png)
        img.load()
        if auto:
            img = img.crop((0, 0, img.width, _content_bottom(img)))
        tmp_out = dst.with_name(f".{dst.name}.part.png")
        img.save(tmp_out)
        os.replace(tmp_out, dst)
    return dst


def _content_bottom(img: Image.Image, margin: int = 24) -> int:
    """Last row that differs from the page's bottom background colour, plus a margin."""
    a = np.asarray(img.convert("RGB")).astype(np.int16)
    background = a[-1, 0]
    rows = np.flatnonzero(np.abs(a - background).sum(axis=2).max(axis=1) > 12)
    return int(min(a.shape[0], (rows[-1] + margin) if rows.size else a.shape[0]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("html", type=Path)
    ap.add_argument("png", type=Path)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument(
        "--height", type=int, default=2400, help="0 = fit the whole page (up to 16000 px)"
    )
    args = ap.parse_args(argv)
    try:
        out = screenshot(args.html, args.png, args.width, args.height)
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
