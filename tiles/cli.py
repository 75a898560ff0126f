"""The ``tiles`` command: inspect, generate, cut, stitch, align, vectorize, export to QGIS."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tiles.console import user_errors
from tiles.grid import MAX_STITCH_PIXELS, MAX_TILES
from tiles.io import check_output_dir, check_output_file, refuse_inputs

_existing = click.Path(path_type=Path)  # existence is checked by trustmap for clearer errors


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="trustmap")
def main() -> None:
    """Geospatial tiling for trustmap: everything here works on any raster size and CRS.

    \b
    Typical use:
      tiles info scene.tif
      tiles cut scene.tif --size 512 --overlap 64 --out tiles_dir
      tiles align labels.gpkg --scene scene.tif --classes classes.yaml --out labels.tif
      tiles export-qgis mask.tif --classes classes.yaml --scene scene.tif --out qgis_dir
    """


@main.command()
@click.argument("scene", type=_existing)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of text.")
@user_errors
def info(scene: Path, as_json: bool) -> None:
    """Print a scene's CRS, size, bands, dtypes, nodata, resolution, bounds, blocks and overviews."""
    from tiles.raster import format_info, scene_info

    data = scene_info(scene)
    click.echo(json.dumps(data, indent=2) if as_json else format_info(data))


@main.command()
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--size", default=2048, show_default=True, type=click.IntRange(256, 16384), help="Scene edge in pixels (1 m each).")
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, same bytes.")
@user_errors
def sample(out_dir: Path, size: int, seed: int) -> None:
    """Write the deterministic synthetic sample scene (4-band uint16 B,G,R,NIR, EPSG:32643, 1 m),
    its ground-truth land-cover mask (landcover6 classes) and an RGB quick-look PNG."""
    from tiles.samples import make_sample

    check_output_dir(out_dir)
    paths = make_sample(out_dir, size=size, seed=seed)
    click.echo(f"scene      {paths.scene}\ntruth      {paths.truth}\nquicklook  {paths.quicklook}")


@main.command()
@click.argument("scene", type=_existing)
@click.option("--png", "out_png", type=click.Path(path_type=Path), default=None, help="Output PNG (default: beside the scene).")
@click.option("--tif", "out_tif", type=click.Path(path_type=Path), default=None, help="Also write a georeferenced RGB GeoTIFF.")
@click.option("--bands", default=None, help="Three 1-based band numbers for R,G,B, e.g. 3,2,1 (default: from band metadata).")
@click.option("--max-size", default=2048, show_default=True, type=click.IntRange(1), help="Longest edge of the quick-look in pixels.")
@user_errors
def quicklook(scene: Path, out_png: Path | None, out_tif: Path | None, bands: str | None, max_size: int) -> None:
    """Render a 2-98 % stretched RGB quick-look of SCENE (nodata transparent), read decimated."""
    from tiles.errors import TrustmapError
    from tiles.quicklook import write_quicklook

    band_tuple = None
    if bands:
        try:
            band_tuple = tuple(int(b) for b in bands.split(","))
        except ValueError:
            raise TrustmapError(f"--bands must be three integers like 3,2,1, got {bands!r}") from None
    res = write_quicklook(scene, out_png=out_png, out_tif=out_tif, bands=band_tuple, max_size=max_size)
    click.echo(f"wrote {res.png}" + (f" and {res.tif}" if res.tif else "") + f" (bands {res.bands})")


@main.command()
@click.argument("scene", type=_existing)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output directory (tiles/ and index.gpkg).")
@click.option("--size", default=512, show_default=True, type=click.IntRange(1), help="Tile edge in pixels.")
@click.option("--overlap", default=64, show_default=True, type=click.IntRange(0),
              help="Pixels shared by neighbouring tiles.")
@click.option("--skip-nodata", is_flag=True, help="Do not write tiles that are entirely nodata.")
@click.option("--max-tiles", default=MAX_TILES, show_default=True, type=click.IntRange(1),
              help="Refuse to write more tiles than this (guards against a typo such as --size 1).")
@user_errors
def cut(scene: Path, out_dir: Path, size: int, overlap: int, skip_nodata: bool, max_tiles: int) -> None:
    """Cut SCENE into overlapping georeferenced GeoTIFF tiles that cover every pixel,
    plus an index GeoPackage of tile footprints (windows and cores in scene pixels).

    tiles/ and index.gpkg are replaced together, only when the new cut is complete."""
    from tiles.cut import cut_scene

    res = cut_scene(scene, out_dir, size=size, overlap=overlap, skip_nodata=skip_nodata, max_tiles=max_tiles)
    click.echo(f"{res.written} tiles in {res.tiles_dir} ({res.skipped} all-nodata skipped); index {res.index}")


@main.command()
@click.argument("index", type=_existing)
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="Output GeoTIFF.")
@click.option("--mode", type=click.Choice(["core", "blend"]), default="core", show_default=True,
              help="core: each pixel from the tile whose core holds it (exact); blend: weighted mean across overlaps.")
@click.option("--cog", is_flag=True, help="Write a Cloud Optimized GeoTIFF with overviews.")
@click.option("--max-pixels", default=MAX_STITCH_PIXELS, show_default=True, type=click.IntRange(1),
              help="Refuse an index that claims a larger scene than this.")
@click.option("--max-tiles", default=MAX_TILES, show_default=True, type=click.IntRange(1),
              help="Refuse an index whose grid has more tiles than this.")
@click.option("--allow-outside-paths", is_flag=True,
              help="Follow tile paths that lead outside the index's folder (only for an index you trust).")
@user_errors
def stitch(index: Path, out_path: Path, mode: str, cog: bool, max_pixels: int, max_tiles: int,
           allow_outside_paths: bool) -> None:
    """Stitch the tiles listed in INDEX (from `tiles cut`) back into one scene, in bounded memory."""
    from tiles.cut import stitch_index

    out = stitch_index(index, out_path, mode=mode, cog=cog, max_pixels=max_pixels, max_tiles=max_tiles,
                       allow_outside=allow_outside_paths)  # fmt: skip
    click.echo(f"wrote {out}")


@main.command()
@click.argument("labels", type=_existing)
@click.option("--scene", required=True, type=_existing, help="The scene whose grid the labels are aligned to.")
@click.option("--classes", "classes_path", required=True, type=_existing, help="Class schema YAML.")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="Output label GeoTIFF (uint8).")
@click.option("--class-field", default=None,
              help="Vector attribute holding the class (code or name); default: class, code, label or name.")
@click.option("--layer", default=None, help="Layer to read from a multi-layer GeoPackage.")
@user_errors
def align(labels: Path, scene: Path, classes_path: Path, out_path: Path, class_field: str | None,
          layer: str | None) -> None:
    """Put a label raster (any CRS/resolution/extent; nearest neighbour) or a vector label file
    (GPKG, GeoJSON, Shapefile) onto SCENE's pixel grid. Unlabelled pixels get the ignore code."""
    from tiles.align import align_labels
    from tiles.classes import load_schema

    check_output_file(out_path, [labels, scene, classes_path])
    report = align_labels(labels, scene, load_schema(classes_path), out_path, class_field=class_field, layer=layer)
    click.echo(f"wrote {out_path}; labels cover {100 * report.covered:.1f}% of the scene")
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)


@main.command()
@click.argument("mask", type=_existing)
@click.option("--classes", "classes_path", required=True, type=_existing, help="Class schema YAML.")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="Output GeoPackage.")
@click.option("--min-area", default=0.0, show_default=True, type=click.FloatRange(0), help="Drop polygons smaller than this (map units²).")
@click.option("--min-pixels", default=0, show_default=True, type=click.IntRange(0), help="Drop polygons of fewer pixels than this.")
@click.option("--simplify", default=None, type=click.FloatRange(0),
              help="Coverage simplification tolerance in map units (neighbours keep shared edges: no gaps or slivers).")
@user_errors
def vectorize(mask: Path, classes_path: Path, out_path: Path, min_area: float, min_pixels: int,
              simplify: float | None) -> None:
    """Turn a class mask into valid polygons per class, with code and name attributes."""
    from tiles.classes import load_schema
    from tiles.vectorize import check_polygons_path, vectorize_mask, write_polygons

    check_polygons_path(out_path, [mask, classes_path])
    gdf = vectorize_mask(mask, load_schema(classes_path), min_area=min_area, simplify=simplify, min_pixels=min_pixels)
    write_polygons(gdf, out_path)
    click.echo(f"wrote {len(gdf)} polygons to {out_path}")


@main.command("export-qgis")
@click.argument("mask", type=_existing)
@click.option("--classes", "classes_path", required=True, type=_existing, help="Class schema YAML.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--scene", type=_existing, default=None, help="Scene for the RGB quick-look background.")
@click.option("--min-area", default=0.0, show_default=True, type=click.FloatRange(0), help="Drop polygons smaller than this (map units²).")
@click.option("--simplify", default=None, type=click.FloatRange(0), help="Coverage simplification tolerance for polygons (map units).")
@user_errors
def export_qgis(mask: Path, classes_path: Path, out_dir: Path, scene: Path | None, min_area: float,
                simplify: float | None) -> None:
    """Write a QGIS-ready bundle: the mask as a styled COG (colour table, class names, .qml),
    its polygons as a styled GeoPackage, and a project file that opens them over the scene."""
    from tiles.classes import load_schema
    from tiles.qgis import bundle_names
    from tiles.qgis import export_qgis as run_export

    for member in bundle_names(mask.stem):
        refuse_inputs(out_dir / member, [classes_path])
    res = run_export(mask, load_schema(classes_path), out_dir, scene_path=scene, min_area=min_area, simplify=simplify)
    click.echo(f"QGIS project: {res.project}")
