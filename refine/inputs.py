"""The inputs of a refinement: scene, cheap label sources and (in simulations) the truth,
read and checked against the scene grid, and label rasters written on it."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from refine.config import RefineConfig
from tiles.classes import ClassSchema, load_schema
from tiles.errors import TrustmapError
from tiles.io import atomic_path, jsonable
from tiles.raster import SceneImage, open_raster, require_crs

Echo = Callable[[str], None]


@dataclass(frozen=True)
class SimulationInputs:
    """Files of a simulation: a scene, one or more cheap label rasters on its grid, the truth."""

    scene: Path
    labels: tuple[Path, ...]
    truth: Path
    heldout_scene: Path | None = None
    heldout_truth: Path | None = None
    classes: Path | None = None
    """Overrides ``config.classes`` when given."""

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "scene": self.scene,
                "labels": list(self.labels),
                "truth": self.truth,
                "heldout_scene": self.heldout_scene,
                "heldout_truth": self.heldout_truth,
                "classes": self.classes,
            }
        )


def label_profile(ref: rasterio.DatasetReader | dict, schema: ClassSchema) -> dict[str, Any]:
    """The GTiff profile of a label raster on ``ref``'s grid (:func:`tiles.profiles.class_mask_profile`)."""
    from tiles.profiles import class_mask_profile

    get = ref.get if isinstance(ref, dict) else lambda k: getattr(ref, k)
    return class_mask_profile(
        width=int(get("width")), height=int(get("height")), crs=get("crs"),
        transform=get("transform"), ignore=schema.ignore,
    )  # fmt: skip


def write_labels(
    path: str | os.PathLike,
    codes: np.ndarray,
    profile: dict[str, Any],
    schema: ClassSchema,
    description: str = "class",
) -> Path:
    """Write a uint8 label raster (colour table, ignore as nodata) atomically."""
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(np.asarray(codes, np.uint8), 1)
        dst.write_colormap(1, schema.colormap())
        dst.set_band_description(1, description)
    return Path(path)


def prepare_sample(
    config: RefineConfig, out_dir: str | os.PathLike, echo: Echo | None = None
) -> SimulationInputs:
    """Generate the sample scene, its truth, cheap labels and a held-out scene from ``config``.

    Deterministic by the config's seeds; files that already exist (a resumed run with the
    same config) are kept, since each was written atomically.
    """
    from refine.cheap.crowd import CrowdConfig, simulate_crowd
    from refine.cheap.spectral import ModelNoiseConfig, simulate_model
    from tiles.samples import make_sample

    out = Path(out_dir)
    schema = load_schema(config.classes)
    s, cheap = config.sample, config.cheap
    scene_dir, held_dir = out / "sample", out / "heldout"
    parts = ("scene.tif", "truth.tif", "quicklook.png")
    if not all((scene_dir / p).exists() for p in parts):
        (echo or (lambda _: None))(f"generating the {s.size}x{s.size} sample scene (seed {s.seed})")
        make_sample(scene_dir, size=s.size, seed=s.seed, schema_path=config.classes)
    if not all((held_dir / p).exists() for p in parts):
        make_sample(held_dir, size=s.heldout_size, seed=s.heldout_seed, schema_path=config.classes)
    n = cheap.annotators if cheap.source == "crowd" else 1
    names = [out / f"cheap_{cheap.source}_{i + 1}.tif" for i in range(n)]
    if not all(p.exists() for p in names):
        with (
            rasterio.open(scene_dir / "scene.tif") as ds,
            rasterio.open(scene_dir / "truth.tif") as ts,
        ):
            bands, truth = ds.read(), ts.read(1)
        if cheap.source == "crowd":
            stack = simulate_crowd(
                truth, schema, CrowdConfig(n_annotators=n, noise=cheap.noise, seed=cheap.seed)
            )
        else:
            stack = simulate_model(
                truth, bands, schema, ModelNoiseConfig(noise=cheap.noise, seed=cheap.seed)
            )[None]
        with rasterio.open(scene_dir / "truth.tif") as ref:
            profile = label_profile(ref, schema)
        for i, path in enumerate(names):
            write_labels(
                path,
                stack[i],
                profile,
                schema,
                description=f"cheap labels ({cheap.source} {i + 1})",
            )
    return SimulationInputs(
        scene=scene_dir / "scene.tif",
        labels=tuple(names),
        truth=scene_dir / "truth.tif",
        heldout_scene=held_dir / "scene.tif",
        heldout_truth=held_dir / "truth.tif",
        classes=Path(config.classes),
    )


def _grid_of(ds: rasterio.DatasetReader) -> str:
    t = ds.transform
    return f"{ds.width}x{ds.height} px, origin ({t.c:.6g}, {t.f:.6g}), pixel {t.a:g} x {t.e:g}, {ds.crs}"


def read_labels(path: Path, scene: SceneImage, schema: ClassSchema, role: str) -> np.ndarray:
    """Read labels on the scene's grid: a single-band code raster, or a vector file.

    A raster on another grid (CRS, transform or size) is an error rather than silently
    resampled: label pixels are data, and the fix (``tiles align``) should be a deliberate,
    visible step. Vector labels have no grid of their own; they are rasterised onto the
    scene's with :mod:`tiles.align` (pixel centres, class from a code or name attribute).
    """
    from tiles.align import VECTOR_SUFFIXES, LabelSource

    if path.suffix.lower() in VECTOR_SUFFIXES:
        source = LabelSource.open(path, scene.path, schema)
        return source.read(Window(0, 0, scene.width, scene.height))
    from tiles.raster import open_class_mask

    with open_class_mask(path, role=role) as ds:
        same = (
            ds.width == scene.width
            and ds.height == scene.height
            and ds.crs == scene.crs
            and ds.transform.almost_equals(
                scene.transform, precision=1e-6 * max(abs(scene.transform.a), 1e-9)
            )
        )
        if not same:
            raise TrustmapError(
                f"{role} does not align with the scene: it is {_grid_of(ds)}, the scene is "
                f"{scene.width}x{scene.height} px, origin ({scene.transform.c:.6g}, {scene.transform.f:.6g}), "
                f"pixel {scene.transform.a:g} x {scene.transform.e:g}, {scene.crs}; bring it onto the scene "
                f"grid first: tiles align {path} --scene {scene.path} --classes CLASSES.yaml --out aligned.tif",
                path,
            )
        data = ds.read(1)
    schema.check_codes(data, path)
    return data.astype(np.uint8)


@dataclass
class LoadedInputs:
    """Inputs read and checked: the scene, the cheap sources, the truth, the held-out pair."""

    scene: SceneImage
    sources: np.ndarray
    """(A, H, W) uint8 cheap labels."""
    truth: np.ndarray | None
    heldout: tuple[SceneImage, np.ndarray] | None
    valid: np.ndarray


def load_inputs(inputs: SimulationInputs, schema: ClassSchema) -> LoadedInputs:
    """Check every input file before any work: grids, codes, empty scenes, missing truth."""
    if inputs.truth is None:
        raise TrustmapError(
            "simulate needs the ground truth (--truth): the simulated expert answers from it"
        )
    if not inputs.labels:
        raise TrustmapError("simulate needs at least one cheap label raster (--labels)")
    with open_raster(inputs.scene) as ds:
        require_crs(ds, inputs.scene)
    scene = SceneImage(inputs.scene)
    valid = scene.valid_mask()
    if not valid.any():
        raise TrustmapError(
            "scene is empty: every pixel is nodata, there is nothing to label", inputs.scene
        )
    sources = np.stack(
        [read_labels(Path(p), scene, schema, "cheap label raster") for p in inputs.labels]
    )
    truth = read_labels(Path(inputs.truth), scene, schema, "ground truth")
    if not np.any((truth != schema.ignore) & valid):
        raise TrustmapError(
            "ground truth has no labelled pixel inside the scene's valid area", inputs.truth
        )
    heldout = None
    if (inputs.heldout_scene is None) != (inputs.heldout_truth is None):
        raise TrustmapError("give both --heldout-scene and --heldout-truth, or neither")
    if inputs.heldout_scene is not None:
        with open_raster(inputs.heldout_scene) as ds:
            require_crs(ds, inputs.heldout_scene)
        hs = SceneImage(inputs.heldout_scene)
        if hs.count != scene.count:
            raise TrustmapError(
                f"held-out scene has {hs.count} bands, the scene {scene.count}",
                inputs.heldout_scene,
            )
        ht = read_labels(Path(inputs.heldout_truth), hs, schema, "held-out truth")
        heldout = (hs, ht)
    return LoadedInputs(scene, sources, truth, heldout, valid)


def fuse_sources(sources: np.ndarray, schema: ClassSchema, how: str) -> np.ndarray:
    """One starting label from several cheap sources (majority vote or Dawid-Skene)."""
    if sources.shape[0] == 1:
        return sources[0].copy()
    from refine.fusion import dawid_skene, majority_vote

    return (
        majority_vote(sources, schema) if how == "majority" else dawid_skene(sources, schema).labels
    )

