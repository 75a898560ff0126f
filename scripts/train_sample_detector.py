"""Train the sample detector (calibration.models.sample_fasterrcnn) on the synthetic set, on CPU.

    .venv/bin/python scripts/train_sample_detector.py --out calibration/weights/sample_detector.pt

Generates the synthetic set (calibration.samples) if it is not there, trains with AdamW and a
cosine schedule for a fixed number of epochs, checkpoints every minute (``--resume`` picks up
an interrupted run), then reports COCO mAP on the test split with pycocotools and writes the
weights with the figures inside the checkpoint. The detector is deliberately left as trained:
nothing here looks at calibration.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import time
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from calibration.models import SAMPLE_IMAGE_SIZE, sample_fasterrcnn  # noqa: E402
from calibration.samples import CATEGORIES, make_detection_set  # noqa: E402
from tiles.io import atomic_path  # noqa: E402

ARCH = "sample_fasterrcnn"


def load_split(root: Path, split: str) -> tuple[list[np.ndarray], list[dict], COCO]:
    """All images of a split in memory (uint8 HxWx3) with their boxes and labels."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(root / f"{split}.json"))
    images, targets = [], []
    for img_id in sorted(coco.imgs):
        info = coco.imgs[img_id]
        images.append(np.asarray(Image.open(root / info["file_name"]).convert("RGB")))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
        targets.append(
            {
                "image_id": img_id,
                "bboxes": [a["bbox"] for a in anns],
                "labels": [a["category_id"] for a in anns],
            }
        )
    return images, targets, coco


def augmenter(seed: int) -> A.Compose:
    """Flips and right-angle turns (aerial images have no up), mild photometric jitter."""
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ],
        bbox_params=A.BboxParams(format="coco", label_fields=["labels"], min_visibility=0.5),
        seed=seed,
    )


def to_target(bboxes, labels) -> dict[str, torch.Tensor]:
    b = torch.as_tensor(np.asarray(bboxes, np.float32).reshape(-1, 4))
    b[:, 2:] += b[:, :2]  # COCO xywh -> xyxy
    return {"boxes": b, "labels": torch.as_tensor(np.asarray(labels, np.int64).reshape(-1))}


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).float().div_(255)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, images: list[np.ndarray], targets: list[dict], coco: COCO
) -> dict:
    """COCO mAP of the model's own (torchvision-post-processed) detections."""
    model.eval()
    results = []
    for start in range(0, len(images), 16):
        batch = [to_tensor(im) for im in images[start : start + 16]]
        for out, tgt in zip(model(batch), targets[start : start + 16], strict=True):
            for box, score, label in zip(
                out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist(), strict=True
            ):
                x0, y0, x1, y1 = box
                results.append(
                    {
                        "image_id": tgt["image_id"],
                        "category_id": int(label),
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": float(score),
                    }
                )
    if not results:
        return {"mAP": 0.0, "mAP50": 0.0, "AP50_per_class": {}}
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # precision: [T iou, R recall, K class, A area, M maxdets]; iou index 0 is 0.5, area 0 all, maxdets -1 = 100
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = ev.eval["precision"][0, :, k, 0, -1]
        per_class[coco.cats[cat_id]["name"]] = (
            round(float(p[p > -1].mean()), 4) if (p > -1).any() else None
        )
    return {
        "mAP": round(float(ev.stats[0]), 4),
        "mAP50": round(float(ev.stats[1]), 4),
        "AP50_per_class": per_class,
        "n_detections": len(results),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--data",
        type=Path,
        default=ROOT / "build" / "sample_detection_set",
        help="synthetic set folder (generated there if missing)",
    )
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-cal", type=int, default=200)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument(
        "--max-minutes",
        type=float,
        default=12.0,
        help="time box: stop after this long even if epochs remain (reported; 0 = none)",
    )
    ap.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared machine")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "calibration" / "weights" / "sample_detector.pt"
    )
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "build" / "sample_detector.ckpt")
    ap.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ckpt_path = args.checkpoint

    if not all((args.data / f"{s}.json").exists() for s in ("train", "test")):
        t0 = time.time()
        make_detection_set(
            args.data,
            args.n_train,
            args.n_cal,
            args.n_test,
            size=SAMPLE_IMAGE_SIZE,
            seed=args.data_seed,
        )
        print(f"generated {args.data} in {time.time() - t0:.1f}s", flush=True)
    train_images, train_targets, _ = load_split(args.data, "train")
    test_images, test_targets, test_coco = load_split(args.data, "test")
    num_classes = 1 + max(c["id"] for c in CATEGORIES)

    model = sample_fasterrcnn(num_classes=num_classes)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    per_epoch = math.ceil(len(train_images) / args.batch_size)
    total = args.epochs * per_epoch
    warmup = max(1, min(100, total // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda i: (
            min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, total) / total))
        ),
    )
    command = "scripts/train_sample_detector.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    step, elapsed, history, commands = 0, 0.0, [], [command]
    if args.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step, elapsed, history = state["step"], state["elapsed"], state["history"]
        commands = state.get("commands", ["(earlier run, command not recorded)"]) + commands
        print(f"resumed {ckpt_path} at step {step}", flush=True)

    def save_checkpoint() -> None:
        with atomic_path(ckpt_path) as tmp:
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "step": step,
                    "elapsed": elapsed,
                    "history": history,
                    "commands": commands,
                },
                tmp,
            )

    start, last_ckpt, stopped_early = time.time() - elapsed, time.time(), False
    model.train()
    while step < total:
        epoch, it = divmod(step, per_epoch)
        order = np.random.default_rng([args.seed, epoch]).permutation(len(train_images))
        aug = augmenter(seed=args.seed * 1000 + step)
        idx = order[it * args.batch_size : (it + 1) * args.batch_size]
        imgs, tgts = [], []
        for i in idx:
            t = train_targets[i]
            out = aug(image=train_images[i], bboxes=t["bboxes"], labels=t["labels"])
            imgs.append(to_tensor(out["image"]))
            tgts.append(to_target(out["bboxes"], out["labels"]))
        losses = model(imgs, tgts)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        sched.step()
        step += 1
        elapsed = time.time() - start
        history.append(
            [step, round(float(loss.detach()), 4)] + [round(v.item(), 4) for v in losses.values()]
        )
        if step % 10 == 0 or step == total:
            print(
                f"step {step}/{total} epoch {epoch + 1} loss {float(loss):.3f} "
                + " ".join(f"{k[5:]}={float(v):.3f}" for k, v in losses.items())
                + f" lr={sched.get_last_lr()[0]:.2e} {elapsed / 60:.1f} min",
                flush=True,
            )
        if time.time() - last_ckpt > 60:
            save_checkpoint()
            last_ckpt = time.time()
        if args.max_minutes > 0 and elapsed > args.max_minutes * 60 and step < total:
            stopped_early = True
            print(f"time box of {args.max_minutes} min reached at step {step}/{total}", flush=True)
            break
    save_checkpoint()
    train_minutes = elapsed / 60

    t0 = time.time()
    metrics = evaluate(model, test_images, test_targets, test_coco)
    print(
        f"test split ({len(test_images)} images): {json.dumps(metrics)} [{time.time() - t0:.0f}s]",
        flush=True,
    )
    with atomic_path(args.out) as tmp:
        torch.save(
            {
                "model": model.state_dict(),
                "arch": ARCH,
                "num_classes": num_classes,
                "categories": [dict(c) for c in CATEGORIES],
                "image_size": SAMPLE_IMAGE_SIZE,
                "training": {
                    "commands": commands,
                    "steps": step,
                    "planned_steps": total,
                    "stopped_early": stopped_early,
                    "train_minutes": round(train_minutes, 2),
                    "n_train": len(train_images),
                    "data_seed": args.data_seed,
                    "seed": args.seed,
                    "torch": str(torch.__version__),
                },
                "test_metrics": metrics,
            },
            tmp,
        )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
