"""Train the small tree-crown detector that the OSBS_029 scene tests run.

    .venv/bin/python scripts/train_tree_detector.py [--steps 300] [--out tests/calibration/data/osbs029_tree_detector.pt]

Why it exists: `calibration detect-scene ... --truth` needs a detector whose classes include
the truth's ("Tree"), and no pretrained tree detector can be downloaded here. This one is the
sample detector's architecture (`calibration.models.sample_fasterrcnn`, 2 classes), started
from the sample detector's backbone, RPN and box head, and trained on random 256-pixel crops
(flips, 90-degree turns) of tests/data/OSBS_029.tif with its 61 boxes: **the tile it is later
audited on**. Its audit numbers therefore measure how well it fits that tile, not how it
generalises; the tests use it to run the real pipeline (tiles, merge, GeoPackage, QGIS,
audit) on real imagery and real boxes. The checkpoint stores the command, steps and seed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "tests/calibration/data/osbs029_tree_detector.pt")
    args = ap.parse_args()

    from calibration.adapters.torchvision_models import SAMPLE_WEIGHTS, read_checkpoint
    from calibration.models import sample_fasterrcnn
    from tiles.boxes import read_boxes

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    scene, truth = ROOT / "tests/data/OSBS_029.tif", ROOT / "tests/data/OSBS_029.csv"
    import rasterio

    with rasterio.open(scene) as src:
        img = src.read([1, 2, 3]).astype(np.float32) / 255.0
    boxes = read_boxes(scene, truth).xyxy.astype(np.float32)
    model = sample_fasterrcnn(num_classes=2)
    state, _ = read_checkpoint(SAMPLE_WEIGHTS)
    own = model.state_dict()
    init = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(init, strict=False)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    _, h, w = img.shape
    c = args.crop
    t0 = time.time()
    for step in range(args.steps):
        images, targets = [], []
        for _ in range(args.batch):
            y0, x0 = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
            crop = img[:, y0 : y0 + c, x0 : x0 + c]
            b = boxes - np.array([x0, y0, x0, y0], np.float32)
            b = np.clip(b, 0, c)
            keep = ((b[:, 2] - b[:, 0]) >= 4) & ((b[:, 3] - b[:, 1]) >= 4)
            # a crown cut to less than half its area by the crop is not a whole tree: drop it
            full = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            keep &= (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) >= 0.5 * full
            b = b[keep]
            if rng.random() < 0.5:
                crop = crop[:, :, ::-1]
                b = np.stack([c - b[:, 2], b[:, 1], c - b[:, 0], b[:, 3]], 1)
            if rng.random() < 0.5:
                crop = crop[:, ::-1, :]
                b = np.stack([b[:, 0], c - b[:, 3], b[:, 2], c - b[:, 1]], 1)
            if rng.random() < 0.5:  # transpose (with the flips: all 8 dihedral turns)
                crop = crop.transpose(0, 2, 1)
                b = b[:, [1, 0, 3, 2]]
            images.append(torch.from_numpy(np.ascontiguousarray(crop)))
            targets.append({"boxes": torch.from_numpy(np.ascontiguousarray(b, np.float32)).reshape(-1, 4), "labels": torch.ones(len(b), dtype=torch.int64)})
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  {time.time() - t0:.0f} s", flush=True)
    model.eval()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": model.state_dict(),
            "arch": "sample_fasterrcnn",
            "num_classes": 2,
            "categories": [{"id": 1, "name": "Tree"}],
            "training": {
                "command": f"scripts/train_tree_detector.py --steps {args.steps} --batch {args.batch} --crop {args.crop} --lr {args.lr} --seed {args.seed}",
                "data": "random crops of tests/data/OSBS_029.tif with tests/data/OSBS_029.csv (the tile it is tested on)",
                "init": "sample_detector.pt (all layers but the class and box outputs)",
                "seconds": round(time.time() - t0, 1),
            },
        },
        args.out,
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
