"""Render the README's screenshots of ``audit.html`` and a refine ``report.html``.

    .venv/bin/python scripts/render_report_screenshots.py [--work /tmp/trustmap-shots] [--only audit|refine]

Runs the calibration demo config and the refine demo config shrunk to a few minutes on two
CPU cores (every other key as in ``configs/``), renders each report with headless Chromium
(``scripts/screenshot_report.py``) 1280 CSS pixels wide, and writes ``docs/img/audit.png``
and ``docs/img/refine_report.png`` as palette PNGs under ~400 KB. The refine report is its
first 2400 pixels; the audit, a long page, is three bands of its full-page render: the
findings, the per-class table, and the most over-confident false positives. The bands are
found by rendering a copy of the page with those headings painted in marker colours (the
layout is unchanged, the pixels kept are the unmodified page's). The reports stay under
``--work`` for a look in a browser.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from screenshot_report import screenshot  # noqa: E402

BIN = Path(sys.executable).parent
MAX_BYTES = 400_000
#: The demo configs shrunk for the screenshots (keys merged into configs/*/demo.yaml).
AUDIT_SMALL = {
    "data": {"sample": {"n_images": 40}},
    "bootstrap": {"n": 50},
    "shift": {"corruptions": ["fog", "gaussian_noise"], "severities": [1, 3, 5], "n_images": 6},
    "ood": {"sample": {"n_images": 8}},
    "repair": {
        "calibration": {"sample": {"n_images": 30}},
        "methods": ["temperature", "platt", "isotonic"],
        "cv_folds": 2,
        "finetune": {"epochs": 1},
    },
}
REFINE_SMALL = {
    "threads": 2,
    "final_train": False,
    "sample": {"size": 384, "heldout_size": 256},
    "model": {"tile_size": 128, "overlap": 16, "encoder_depth": 3, "decoder_channels": [16, 8, 8]},
    "train": {"crop": 64, "batch_size": 4, "steps": 20, "finetune_steps": 6},
    "regions": {"size": 300},
    "select": {"rounds": 2},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def small_config(src: Path, over: dict, dst: Path, path_keys: list[tuple[str, ...]]) -> Path:
    """``src`` with ``over`` merged in, relative paths at ``path_keys`` made absolute."""
    cfg = _merge(yaml.safe_load(src.read_text(encoding="utf-8")), over)
    for keys in path_keys:
        node = cfg
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = str((src.parent / node[keys[-1]]).resolve())
    dst.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return dst


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    subprocess.run(cmd, check=True, env=env)


def shrink_png(src: Path, dst: Path, width: int = 1100) -> Path:
    """``src`` scaled to ``width`` and quantised to 256 colours (text stays sharp), under MAX_BYTES."""
    img = Image.open(src).convert("RGB")
    while True:
        h = round(img.height * width / img.width)
        small = img.resize((width, h), Image.LANCZOS).quantize(256, method=Image.MEDIANCUT)
        dst.parent.mkdir(parents=True, exist_ok=True)
        small.save(dst, optimize=True)
        if dst.stat().st_size <= MAX_BYTES or width < 600:
            return dst
        width = int(width * 0.85)


#: Marker colours painted on a copy of the audit page to find its bands.
MARKS = {
    "findings": ((0, 255, 1), ".findings"),
    "classes": ((255, 0, 254), "[id^=classes-]"),
    "after_classes": ((1, 254, 255), "[id^=classes-] ~ :is(h2,h3)"),
    "fp": ((254, 255, 0), "#false-positives"),
    "after_fp": ((0, 1, 254), "#false-positives ~ h2"),
}


def _rows_of(img: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.flatnonzero((img == rgb).all(axis=2).sum(axis=1) > 50)


def audit_bands(html: Path, work: Path) -> Path:
    """The audit page's findings, first per-class table and false-positive section, stacked."""
    page = html.read_text(encoding="utf-8")
    css = "".join(f"{sel}{{background:rgb{rgb} !important}}" for rgb, sel in MARKS.values())
    marked = html.with_name(".marked_audit.html")
    marked.write_text(page.replace("</style>", css + "</style>", 1), encoding="utf-8")
    try:
        full = np.asarray(
            Image.open(screenshot(html, work / "audit_full.png", 1280, 0)).convert("RGB")
        )
        mark = np.asarray(
            Image.open(screenshot(marked, work / "audit_marked.png", 1280, 0)).convert("RGB")
        )
    finally:
        marked.unlink()
    assert full.shape == mark.shape, "the marker colours changed the layout"
    rows = {k: _rows_of(mark, rgb) for k, (rgb, _) in MARKS.items()}
    top = int(rows["findings"].max()) + 24
    c0 = int(rows["classes"].min()) - 12
    c1 = int(rows["after_classes"][rows["after_classes"] > c0].min()) - 12
    f0 = int(rows["fp"].min()) - 12
    after = rows["after_fp"][rows["after_fp"] > f0]
    f1 = int(after.min()) - 12 if after.size else full.shape[0]
    gap = np.full((14, full.shape[1], 3), (244, 245, 247), np.uint8)
    gap[6:8, ::12] = (180, 185, 195)  # a dotted rule: parts of the page left out
    out = work / "audit_bands.png"
    Image.fromarray(np.vstack([full[:top], gap, full[c0:c1], gap, full[f0:f1]])).save(out)
    return out


def audit(work: Path) -> Path:
    cfg = small_config(
        ROOT / "configs/calibration/demo.yaml", AUDIT_SMALL, work / "calibration_small.yaml",
        [("detector", "weights")],
    )  # fmt: skip
    out = work / "audit_demo"
    shutil.rmtree(out, ignore_errors=True)  # our own earlier run
    run([str(BIN / "calibration"), "audit", "--config", str(cfg), "--out", str(out)])
    return out / "audit.html"


def refine(work: Path) -> Path:
    cfg = small_config(
        ROOT / "configs/refine/demo.yaml", REFINE_SMALL, work / "refine_small.yaml", [("classes",)]
    )
    out = work / "refine"
    shutil.rmtree(out, ignore_errors=True)
    run([str(BIN / "refine"), "simulate", "--config", str(cfg), "-o", str(out)])
    return out / "report.html"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/trustmap-shots"))
    ap.add_argument("--only", choices=("audit", "refine"))
    ap.add_argument(
        "--no-run", action="store_true", help="screenshot the reports already in --work"
    )
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    jobs = {"audit": (audit, "audit_demo/audit.html", "audit.png"),
            "refine": (refine, "refine/report.html", "refine_report.png")}  # fmt: skip
    for name, (make, page, png) in jobs.items():
        if args.only and name != args.only:
            continue
        html = args.work / page if args.no_run else make(args.work)
        if name == "audit":
            raw = audit_bands(html, args.work)
        else:
            raw = screenshot(html, args.work / f"{name}_raw.png", width=1280, height=2400)
        dst = shrink_png(raw, ROOT / "docs/img" / png)
        print(f"{dst} ({dst.stat().st_size // 1000} KB)")


if __name__ == "__main__":
    main()
