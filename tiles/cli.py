"""The ``tiles`` command: inspect, generate, cut, stitch, align, vectorize, export to QGIS.

Conventions (shared with ``refine`` and ``calibration`` through :mod:`tiles.cli_options`):
the scene is always a positional argument (after the labels or mask a command works on);
``-o/--output`` names the output and existing output is replaced only with ``--overwrite``;
``--co KEY=VALUE`` passes GDAL creation options to raster outputs; inputs may be GDAL paths
(``/vsizip/…``, ``/vsicurl/…``) or URLs. Older spellings (``--out``, ``--scene``, ``cut
--size``) still work, hidden from ``--help``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tiles.cli_options import (
    DATASET,
    classes_option,
    creation_options,
    output_option,
    overwrite_option,
    renamed_option,
    require,
    seed_option,
    verbosity_options,
    version_option,
)
from tiles.console import user_errors
from tiles.grid import MAX_STITCH_PIXELS, MAX_TILES
from tiles.io import check_output_dir, check_output_file, refuse_existing, refuse_inputs

Dataset = Path | str  # a local path, or a GDAL path / URL kept as text


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@version_option()
@verbosity_options(loggers=("tiles",))
def main() -> None:
    """Geospatial tiling for trustmap: everything here works on any raster size and CRS.

    \b
    Typical use:
      tiles info scene.tif
      tiles cut scene.tif --tile-size 512 --overlap 64 -o tiles_dir
      tiles align labels.gpkg scene.tif --classes classes.yaml -o labels.tif
      tiles export-qgis mask.tif scene.tif --classes classes.yaml -o qgis_dir
    """


def _check_co(co: dict[str, str], driver: str = "GTiff", **base: Any) -> dict[str, str]:
    from tiles.profiles import check_creation_options

    return check_creation_options(co, driver=driver, base=base)


@main.command()
@click.argument("scene", type=DATASET)
@click.option("--json", "as_json", is_flag=True, help="Print JSON with rio info's keys (plus trustmap's extras).")
@user_errors
def info(scene: Dataset, as_json: bool) -> None:
    """Print a scene's CRS, size, bands, dtypes, nodata, resolution, bounds, blocks and overviews."""
    from tiles.raster import format_info, scene_info

    data = scene_info(scene)
    click.echo(json.dumps(data, indent=2) if as_json else format_info(data))


@main.command()
@output_option(help="Output directory (scene.tif, truth.tif, quicklook.png).")
@click.option("--size", default=2048, show_default=True, type=click.IntRange(256, 16384), help="Scene edge in pixels (1 m each).")
@seed_option(help="Same seed, same bytes.")
@overwrite_option
@user_errors
def sample(output: Path, size: int, seed: int, overwrite: bool) -> None:
    """Write the deterministic synthetic sample scene (4-band uint16 B,G,R,NIR, EPSG:32643, 1 m),
    its ground-truth land-cover mask (landcover6 classes) and an RGB quick-look PNG."""
    from tiles.samples import make_sample

    check_output_dir(output, option="--output")
    refuse_existing([output / n for n in ("scene.tif", "truth.tif", "quicklook.png")], overwrite)
    paths = make_sample(output, size=size, seed=seed)
    click.echo(f"scene      {paths.scene}\ntruth      {paths.truth}\nquicklook  {paths.quicklook}")


@main.command()
@click.argument("scene", type=DATASET)
@output_option(help="Output PNG (default: <scene>.quicklook.png beside a local scene).", required=False, dest="out_png")
@renamed_option("--png", "-o/--output", "out_png", deprecated=False, type=click.Path(path_type=Path))
@click.option("--tif", "out_tif", type=click.Path(path_type=Path), default=None, help="Also write a georeferenced RGB GeoTIFF.")
@click.option("--bands", default=None, help="Three 1-based band numbers for R,G,B, e.g. 3,2,1 (default: from band metadata).")
@click.option("--max-size", default=2048, show_default=True, type=click.IntRange(1), help="Longest edge of the quick-look in pixels.")
@creation_options
@overwrite_option
@user_errors
def quicklook(scene: Dataset, out_png: Path | None, out_tif: Path | None, bands: str | None, max_size: int,
              creation_options: dict[str, str], overwrite: bool) -> None:  # fmt: skip
    """Render a 2-98 % stretched RGB quick-look of SCENE (nodata transparent), read decimated."""
    from tiles.errors import TrustmapError
    from tiles.profiles import check_raster_suffix
    from tiles.quicklook import default_png, write_quicklook

    band_tuple = None
    if bands:
        try:
            band_tuple = tuple(int(b) for b in bands.split(","))
        except ValueError:
            raise TrustmapError(f"--bands must be three integers like 3,2,1, got {bands!r}") from None
    if out_png is None and out_tif is None:
        out_png = default_png(scene)
    for opt, out in (("--output", out_png), ("--tif", out_tif)):
        if out is not None:
            check_output_file(out, [scene], option=opt)
    if out_png is not None and out_tif is not None and out_png.resolve() == out_tif.resolve():
        raise TrustmapError("--output and --tif name the same file", out_png)
    if out_png is not None and out_png.suffix.lower() != ".png":
        raise TrustmapError(f"--output must name a .png file, not '{out_png.suffix or 'no suffix'}'", out_png)
    if out_tif is not None:
        check_raster_suffix(out_tif, option="--tif")
        creation_options = _check_co(creation_options, count=3, dtype="uint8", nodata=0)
    elif creation_options:
        raise click.UsageError("--co applies to the --tif output; give --tif too")
    refuse_existing([out_png] if out_png else [], overwrite, option="--output")
    refuse_existing([out_tif] if out_tif else [], overwrite, option="--tif")
    res = write_quicklook(scene, out_png=out_png, out_tif=out_tif, bands=band_tuple, max_size=max_size,
                          creation_options=creation_options)  # fmt: skip
    click.echo(f"wrote {res.png or ''}" + (" and " if res.png and res.tif else "") + f"{res.tif or ''} (bands {res.bands})")


@main.command()
@click.argument("scene", type=DATASET)
@output_option(help="Output directory (tiles/ and index.gpkg).")
@click.option("--tile-size", default=None, type=click.IntRange(1), help="Tile edge in pixels.  [default: 512]")
@renamed_option("--size", "--tile-size", "tile_size", type=click.IntRange(1))
@click.option("--overlap", default=64, show_default=True, type=click.IntRange(0),
              help="Pixels shared by neighbouring tiles.")
@click.option("--skip-nodata", is_flag=True, help="Do not write tiles that are entirely nodata.")
@click.option("--max-tiles", default=MAX_TILES, show_default=True, type=click.IntRange(1),
              help="Refuse to write more tiles than this (guards against a typo such as --tile-size 1).")
@creation_options
@overwrite_option
@user_errors
def cut(scene: Dataset, output: Path, tile_size: int | None, overlap: int, skip_nodata: bool, max_tiles: int,
        creation_options: dict[str, str], overwrite: bool) -> None:  # fmt: skip
    """Cut SCENE into overlapping georeferenced GeoTIFF tiles that cover every pixel,
    plus an index GeoPackage of tile footprints (windows and cores in scene pixels).

    tiles/ and index.gpkg are replaced together, only when the new cut is complete."""
    from tiles.cut import cut_scene

    res = cut_scene(scene, output, size=512 if tile_size is None else tile_size, overlap=overlap,
                    skip_nodata=skip_nodata, max_tiles=max_tiles, creation_options=creation_options,
                    overwrite=overwrite)  # fmt: skip
    click.echo(f"{res.written} tiles in {res.tiles_dir} ({res.skipped} all-nodata skipped); index {res.index}")


@main.command()
@click.argument("index", type=click.Path(path_type=Path))
@output_option(help="Output GeoTIFF.")
@click.option("--mode", type=click.Choice(["core", "blend"]), default="core", show_default=True,
              help="core: each pixel from the tile whose core holds it (exact); blend: weighted mean across overlaps.")
@click.option("--cog", is_flag=True, help="Write a Cloud Optimized GeoTIFF with overviews.")
@click.option("--max-pixels", default=MAX_STITCH_PIXELS, show_default=True, type=click.IntRange(1),
              help="Refuse an index that claims a larger scene than this.")
@click.option("--max-tiles", default=MAX_TILES, show_default=True, type=click.IntRange(1),
              help="Refuse an index whose grid has more tiles than this.")
@click.option("--allow-outside-paths", is_flag=True,
              help="Follow tile paths that lead outside the index's folder (only for an index you trust).")
@creation_options
@overwrite_option
@user_errors
def stitch(index: Path, output: Path, mode: str, cog: bool, max_pixels: int, max_tiles: int,
           allow_outside_paths: bool, creation_options: dict[str, str], overwrite: bool) -> None:
    """Stitch the tiles listed in INDEX (from `tiles cut`) back into one scene, in bounded memory."""
    from tiles.cut import stitch_index
    from tiles.profiles import check_raster_suffix

    check_output_file(output, [index], option="--output")
    check_raster_suffix(output)
    out = stitch_index(index, output, mode=mode, cog=cog, max_pixels=max_pixels, max_tiles=max_tiles,  # type: ignore[arg-type]
                       allow_outside=allow_outside_paths, creation_options=creation_options,
                       overwrite=overwrite)  # fmt: skip
    click.echo(f"wrote {out}")


@main.command()
@click.argument("labels", type=DATASET)
@click.argument("scene", type=DATASET, required=False, metavar="SCENE")  # required; optional only for --scene
@renamed_option("--scene", "the SCENE argument", "scene", type=DATASET)
@classes_option()
@output_option(help="Output label GeoTIFF (uint8).")
@click.option("--class-field", default=None,
              help="Vector attribute holding the class (code or name); default: class, code, label or name.")
@click.option("--layer", default=None, help="Layer to read from a multi-layer GeoPackage.")
@creation_options
@overwrite_option
@user_errors
def align(labels: Dataset, scene: Dataset | None, classes_path: Path, output: Path, class_field: str | None,
          layer: str | None, creation_options: dict[str, str], overwrite: bool) -> None:  # fmt: skip
    """Put LABELS, a label raster (any CRS/resolution/extent; nearest neighbour) or a vector label
    file (GPKG, GeoJSON, Shapefile, ...), onto SCENE's pixel grid. Unlabelled pixels get the
    ignore code."""
    from tiles.align import align_labels
    from tiles.classes import load_schema
    from tiles.profiles import check_raster_suffix

    require({"scene": scene}, "scene", "'SCENE'", kind="argument")
    assert scene is not None
    check_output_file(output, [labels, scene, classes_path], option="--output")
    check_raster_suffix(output)
    schema = load_schema(classes_path)
    creation_options = _check_co(creation_options, nodata=schema.ignore)
    refuse_existing([output], overwrite)
    report = align_labels(labels, scene, schema, output, class_field=class_field, layer=layer,
                          creation_options=creation_options)  # fmt: skip
    click.echo(
        f"wrote {output}; the labels' footprint covers {100 * report.covered:.1f}% of the scene, "
        f"{100 * report.labelled_fraction:.1f}% of its pixels got a class"
    )
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)


@main.command()
@click.argument("mask", type=DATASET)
@classes_option()
@output_option(help="Output GeoPackage.")
@click.option("--min-area", default=0.0, show_default=True, type=click.FloatRange(0), help="Drop polygons smaller than this (map units²).")
@click.option("--min-pixels", default=0, show_default=True, type=click.IntRange(0), help="Drop polygons of fewer pixels than this.")
@click.option("--simplify", default=None, type=click.FloatRange(0),
              help="Coverage simplification tolerance in map units (neighbours keep shared edges: no gaps or slivers).")
@overwrite_option
@user_errors
def vectorize(mask: Dataset, classes_path: Path, output: Path, min_area: float, min_pixels: int,
              simplify: float | None, overwrite: bool) -> None:
    """Turn a class mask into valid polygons per class, with code and name attributes."""
    from tiles.classes import load_schema
    from tiles.vectorize import check_polygons_path, vectorize_mask, write_polygons

    check_polygons_path(output, [mask, classes_path], option="--output")
    refuse_existing([output], overwrite)
    gdf = vectorize_mask(mask, load_schema(classes_path), min_area=min_area, simplify=simplify, min_pixels=min_pixels)
    write_polygons(gdf, output)
    click.echo(f"wrote {len(gdf)} polygons to {output}")


@main.command("export-qgis")
@click.argument("mask", type=DATASET)
@click.argument("scene", type=DATASET, required=False)
@renamed_option("--scene", "the SCENE argument", "scene", type=DATASET)
@classes_option()
@output_option(help="Output directory.")
@click.option("--min-area", default=0.0, show_default=True, type=click.FloatRange(0), help="Drop polygons smaller than this (map units²).")
@click.option("--simplify", default=None, type=click.FloatRange(0), help="Coverage simplification tolerance for polygons (map units).")
@overwrite_option
@user_errors
def export_qgis(mask: Dataset, scene: Dataset | None, classes_path: Path, output: Path, min_area: float,
                simplify: float | None, overwrite: bool) -> None:  # fmt: skip
    """Write a QGIS-ready bundle: MASK as a styled COG (colour table, class names, .qml), its
    polygons as a styled GeoPackage, and a project file that opens them over SCENE's RGB
    quick-look (SCENE is optional)."""
    from tiles.classes import load_schema
    from tiles.qgis import bundle_names
    from tiles.qgis import export_qgis as run_export

    for member in bundle_names(Path(str(mask)).stem):
        refuse_inputs(output / member, [classes_path], option="--output")
    res = run_export(mask, load_schema(classes_path), output, scene_path=scene, min_area=min_area,
                     simplify=simplify, overwrite=overwrite)  # fmt: skip
    click.echo(f"QGIS project: {res.project}")
