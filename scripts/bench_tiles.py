"""Benchmark tiles: cut + stitch throughput against raw rasterio, and stitching peak memory.

Throughput: on a generated N x N 4-band uint16 scene (16384² = 2 GiB raw by default),
  * raw     — rasterio reads every 512² block and writes it to a new GeoTIFF (same profile);
  * stitch  — TileGrid(512, overlap 64) windows read from the scene and streamed through
              StitchWriter (core mode) into a new GeoTIFF: trustmap's in-memory cut + stitch;
  * cut+stitch files — `tiles cut` to GeoTIFF tiles + index, then `tiles stitch` back
              (the CLI path, with a tile file per window).
Both sides write the same bytes (the round trip is checked bit for bit). Ratio = raw time /
ours (1.0 = as fast as raw rasterio).

Memory: peak RSS of a child process that stitches a 4-class float32 probability raster
(blend mode, tiles computed on the fly) at 8192² and 16384².

    python scripts/bench_tiles.py [--size 16384] [--repeats 3] [--workdir /tmp/trustmap-bench]

Align (``--align``, its own section): `tiles align` of a vector label file against a plain
``rasterio.features.rasterize`` of the same file onto the same grid. The file is the sample
scene's truth vectorized (``--align-size`` pixels square; 2048² gives ~10k polygons of six
classes); both sides read the GeoPackage and write a deflated uint8 GeoTIFF, trustmap also
validates, repairs and checks coverage and overlaps. Ratio = trustmap time / plain time per
interleaved repeat; the figure is the median of those ratios (target ≤ 1.5×).

    python scripts/bench_tiles.py --align [--align-size 2048] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import update_section, write_json  # noqa: E402

from tiles.align import align_labels  # noqa: E402
from tiles.classes import builtin_schema_path, load_schema  # noqa: E402
from tiles.cut import cut_scene, stitch_index  # noqa: E402
from tiles.grid import TileGrid  # noqa: E402
from tiles.stitch import StitchWriter  # noqa: E402

JSON_PATH = Path(__file__).resolve().parents[1] / "docs" / "bench" / "tiles.json"
ALIGN_JSON_PATH = JSON_PATH.with_name("tiles_align.json")
PROFILE = dict(
    driver="GTiff",
    dtype="uint16",
    count=4,
    crs="EPSG:32643",
    tiled=True,
    blockxsize=512,
    blockysize=512,
    compress="deflate",
    predictor=2,
    interleave="band",
    BIGTIFF="IF_SAFER",
)


def make_scene(path: Path, size: int) -> None:
    """A textured 4-band uint16 scene written block by block (never held whole in memory)."""
    prof = dict(
        PROFILE,
        width=size,
        height=size,
        transform=rasterio.transform.from_origin(770000, 1430000 + size, 1, 1),
    )
    rng = np.random.default_rng(0)
    base = rng.integers(300, 4000, size=(4, 64, 64)).astype(np.float32)
    with rasterio.open(path, "w", **prof) as ds:
        for r in range(0, size, 512):
            for c in range(0, size, 512):
                h, w = min(512, size - r), min(512, size - c)
                yy, xx = np.mgrid[r : r + h, c : c + w]
                field = base[:, (yy // 256) % 64, (xx // 256) % 64]
                noise = rng.normal(0, 60, size=(4, h, w)).astype(np.float32)
                ds.write(
                    np.clip(field + noise + 200 * np.sin(xx / 37.0), 0, 10000).astype(np.uint16),
                    window=Window(c, r, w, h),
                )


def raw_copy(src: Path, dst: Path) -> None:
    with rasterio.open(src) as s:
        prof = dict(s.profile)
        with rasterio.open(dst, "w", **prof) as d:
            for _, win in s.block_windows(1):
                d.write(s.read(window=win), window=win)


def stitch_copy(src: Path, dst: Path) -> None:
    with rasterio.open(src) as s:
        grid = TileGrid.from_dataset(s, 512, 64)
        with StitchWriter(
            dst, grid, s.count, s.dtypes[0], mode="core", nodata=s.nodata, blocksize=512
        ) as w:
            for t in grid:
                w.write(t, s.read(window=t.window))


def files_copy(src: Path, dst: Path, work: Path) -> None:
    res = cut_scene(src, work, size=512, overlap=64)
    stitch_index(res.index, dst)


def same_pixels(a: Path, b: Path) -> bool:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        for _, win in x.block_windows(1):
            if not np.array_equal(x.read(window=win), y.read(window=win)):
                return False
        return x.transform == y.transform and x.crs == y.crs
    return False


def prob_tile(tile, classes: int = 4) -> np.ndarray:
    """A smooth, seam-free probability field for a window: a pure function of the window."""
    r0, c0 = int(tile.window.row_off), int(tile.window.col_off)
    h, w = int(tile.window.height), int(tile.window.width)
    yy, xx = np.mgrid[r0 : r0 + h, c0 : c0 + w].astype(np.float32)
    logits = np.stack(
        [np.sin(xx / (50 + 17 * k)) + np.cos(yy / (40 + 11 * k)) for k in range(classes)]
    )
    e = np.exp(logits - logits.max(0))
    return (e / e.sum(0)).astype(np.float32)


def rss_child(size: int, out: Path) -> None:
    grid = TileGrid(
        size, size, 512, 64, rasterio.transform.from_origin(0, size, 1, 1), "EPSG:32643"
    )
    with StitchWriter(out, grid, 4, "float32", mode="blend", blocksize=512) as w:
        for t in grid:
            w.write(t, prob_tile(t))
    print(f"{peak_rss_mib():.1f} {w.peak_blocks}")


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: on Linux that survives
    fork+exec, so a child would report its parent's high-water mark."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def throughput(scene: Path, work: Path, repeats: int):
    """Interleaved repeats of the three copy paths; wall and CPU seconds each."""
    times: dict[str, list[float]] = {"raw": [], "stitch": [], "files": []}
    cpu: dict[str, list[float]] = {"raw": [], "stitch": [], "files": []}
    for rep in range(repeats):
        for name in ("raw", "stitch", "files"):
            dst = work / f"{name}.tif"
            dst.unlink(missing_ok=True)
            shutil.rmtree(work / "cut", ignore_errors=True)
            t, c = time.perf_counter(), time.process_time()
            if name == "raw":
                raw_copy(scene, dst)
            elif name == "stitch":
                stitch_copy(scene, dst)
            else:
                files_copy(scene, dst, work / "cut")
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
            print(
                f"  rep {rep} {name:6s} {times[name][-1]:.1f}s wall {cpu[name][-1]:.1f}s cpu",
                flush=True,
            )
    exact = same_pixels(scene, work / "stitch.tif") and same_pixels(scene, work / "files.tif")
    return times, cpu, exact


def plain_rasterize(vector: Path, scene: Path, out: Path, ignore: int) -> None:
    """What a user would write with rasterio alone: read, rasterize onto the grid, write."""
    import geopandas as gpd
    from rasterio.features import rasterize

    gdf = gpd.read_file(vector, engine="pyogrio")
    with rasterio.open(scene) as s:
        shape, transform, crs = (s.height, s.width), s.transform, s.crs
    burnt = rasterize(
        zip(gdf.geometry.to_crs(crs), gdf["code"].astype("uint8").tolist(), strict=True),
        out_shape=shape, transform=transform, fill=ignore, dtype=np.uint8,
    )  # fmt: skip
    prof = dict(
        driver="GTiff", width=shape[1], height=shape[0], count=1, dtype="uint8", crs=crs,
        transform=transform, nodata=ignore, tiled=True, blockxsize=256, blockysize=256,
        compress="deflate",
    )  # fmt: skip
    with rasterio.open(out, "w", **prof) as d:
        d.write(burnt, 1)


def _time_pair(vector: Path, scene: Path, work: Path, schema, repeats: int) -> dict:
    """Interleaved repeats of `tiles align` (library call, no progress bar) and plain rasterize."""
    times: dict[str, list[float]] = {"align": [], "rasterize": []}
    cpu: dict[str, list[float]] = {"align": [], "rasterize": []}
    for rep in range(repeats):
        for name in ("rasterize", "align") if rep % 2 else ("align", "rasterize"):
            out = work / f"{vector.stem}_{name}.tif"
            out.unlink(missing_ok=True)
            t, c = time.perf_counter(), time.process_time()
            if name == "align":
                report = align_labels(vector, scene, schema, out, progress=False)
            else:
                plain_rasterize(vector, scene, out, schema.ignore)
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
            print(f"  {vector.stem} rep {rep} {name:9s} {times[name][-1]:.2f}s wall {cpu[name][-1]:.2f}s cpu", flush=True)
    with rasterio.open(work / f"{vector.stem}_align.tif") as a, rasterio.open(work / f"{vector.stem}_rasterize.tif") as b:
        same = bool(np.array_equal(a.read(1), b.read(1)))
    ratios = [a / r for a, r in zip(times["align"], times["rasterize"], strict=True)]
    cpu_ratios = [a / r for a, r in zip(cpu["align"], cpu["rasterize"], strict=True)]
    return {
        "times_s": times, "cpu_s": cpu, "ratios": ratios, "cpu_ratios": cpu_ratios,
        "median_ratio": statistics.median(ratios), "median_cpu_ratio": statistics.median(cpu_ratios),
        "same_pixels": same, "conflict_pixels": report.conflict_pixels, "covered": report.covered,
    }  # fmt: skip


def bench_align(work: Path, size: int, repeats: int) -> dict:
    """Two label files: the truth vectorized (vertices on pixel corners: align's one-burn route)
    and the same polygons shifted by a quarter pixel (off the lattice: the two-burn route)."""
    import geopandas as gpd

    from tiles.samples import make_sample
    from tiles.vectorize import vectorize_mask, write_polygons

    schema = load_schema(builtin_schema_path("landcover6"))
    paths = make_sample(work / "sample", size=size, seed=0)
    lattice = work / "truth.gpkg"
    gdf = vectorize_mask(paths.truth, schema, progress=False)
    write_polygons(gdf, lattice)
    shifted = work / "truth_shifted.gpkg"
    gpd.GeoDataFrame(gdf.drop(columns="geometry"), geometry=gdf.geometry.translate(0.25, 0.25), crs=gdf.crs).to_file(
        shifted, layer="polygons", driver="GPKG", engine="pyogrio"
    )
    return {
        "vector": f"sample truth {size}x{size} vectorized: {len(gdf)} polygons, 6 classes",
        "lattice": _time_pair(lattice, paths.scene, work, schema, repeats),
        "shifted": _time_pair(shifted, paths.scene, work, schema, repeats),
    }


def align_section(res: dict, repeats: int) -> str:
    rows = []
    for key, what in (("lattice", "vectorized truth (vertices on pixel corners)"),
                      ("shifted", "the same shifted by ¼ pixel (off the lattice)")):  # fmt: skip
        r = res[key]
        med = {k: statistics.median(v) for k, v in r["times_s"].items()}
        mcpu = {k: statistics.median(v) for k, v in r["cpu_s"].items()}
        rows.append(
            f"| {what} | {med['rasterize']:.2f} s ({mcpu['rasterize']:.2f} s) | {med['align']:.2f} s "
            f"({mcpu['align']:.2f} s) | **{r['median_ratio']:.2f}×** ({r['median_cpu_ratio']:.2f}×) | "
            f"{r['same_pixels']} | {r['conflict_pixels']} |"
        )
    met = "met" if res["lattice"]["median_ratio"] <= 1.5 else "**not met**"
    met_s = "met" if res["shifted"]["median_ratio"] <= 1.5 else "**not met**"
    table = "\n".join(rows)
    return f"""## tiles: align of a vector label file against plain rasterize

Labels: {res["vector"]}, aligned onto the sample scene's grid. `tiles align` (validation,
repair, class lookup, coverage and conflicting-overlap counts, windowed rasterize, atomic write)
against a plain `rasterio.features.rasterize` of the same file onto the same grid (read with
geopandas, written as a deflated GeoTIFF). {repeats} interleaved repeats per file; ratio =
trustmap / plain per repeat, median of those ratios (target ≤ 1.5×). Wall time, CPU time in brackets.

| labels | plain | `tiles align` | ratio | same pixels | conflict pixels |
|---|---|---|---|---|---|
{table}

Target on the vectorized truth: {met}; off the lattice: {met_s}. Polygons whose vertices all sit on
pixel corners cover exactly their area in pixel centres, so one burn (which feature won each pixel)
proves there are no overlaps; other polygons are burnt a second time in reverse order to count the
pixels where features of different classes overlap. Before this change (a `union_all` of every
feature for the coverage, a pairwise relate for overlaps; commit 874bc1b, same command) the vectorized
truth took 8.88× (CPU 8.80×).
"""


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rss-sizes", type=int, nargs="*", default=[8192, 16384])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/trustmap-bench-tiles"))
    ap.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--align", action="store_true", help="Run the align benchmark only.")
    ap.add_argument("--align-size", type=int, default=2048)
    ap.add_argument("--no-doc", action="store_true", help="Print the section; leave docs/benchmarks.md as is.")
    ap.add_argument(
        "--rss-only",
        action="store_true",
        help="Re-measure memory only; keep the throughput figures of docs/bench/tiles.json.",
    )
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.workdir / f"probs_{args.rss_child}.tif")
        return
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if args.align:
        res = bench_align(work, args.align_size, args.repeats)
        write_json(ALIGN_JSON_PATH, res)
        md = align_section(res, args.repeats)
        if not args.no_doc:
            update_section("tiles-align", md)
        print(md)
        return
    if args.rss_only:
        prev = json.loads(JSON_PATH.read_text())
        times, cpu = prev["times_s"], prev["cpu_s"]
        args.size = int(prev["scene"].split("x")[0])
        args.repeats = len(times["raw"])
        exact = prev["round_trip_bit_exact"]
    else:
        scene = work / "scene.tif"
        t0 = time.perf_counter()
        make_scene(scene, args.size)
        print(f"scene {args.size}² generated in {time.perf_counter() - t0:.0f}s", flush=True)
        times, cpu, exact = throughput(scene, work, args.repeats)
    raw_mb = args.size * args.size * 4 * 2 / 2**20
    med = {k: statistics.median(v) for k, v in times.items()}
    mcpu = {k: statistics.median(v) for k, v in cpu.items()}

    rss = {}
    for s in args.rss_sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(s), "--workdir", str(work)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        rss[s] = {"peak_rss_mib": float(out[0]), "peak_open_blocks": int(out[1])}
        (work / f"probs_{s}.tif").unlink(missing_ok=True)
        print(f"  stitch 4-class float32 {s}²: peak RSS {out[0]} MiB", flush=True)

    result = {
        "scene": f"{args.size}x{args.size}x4 uint16 ({raw_mb:.0f} MiB raw), deflate, 512² blocks",
        "times_s": times,
        "median_s": med,
        "cpu_s": cpu,
        "median_cpu_s": mcpu,
        "ratio_stitch_vs_raw": med["raw"] / med["stitch"],
        "ratio_files_vs_raw": med["raw"] / med["files"],
        "cpu_ratio_stitch_vs_raw": mcpu["raw"] / mcpu["stitch"],
        "cpu_ratio_files_vs_raw": mcpu["raw"] / mcpu["files"],
        "round_trip_bit_exact": exact,
        "peak_rss": rss,
    }
    write_json(JSON_PATH, result)
    rows = "\n".join(
        f"| {s}² × 4 float32 (blend) | {v['peak_rss_mib']:.0f} MiB | {v['peak_open_blocks']} |"
        for s, v in rss.items()
    )
    md = f"""## tiles: cut + stitch throughput and stitching memory

Scene: {result["scene"]}; tiles 512² with 64 px overlap. Median of {args.repeats} interleaved runs;
ratio = raw rasterio time / ours (target ≥ 0.7×), in wall time and in process CPU time (the machine is shared,
so CPU time is the steadier of the two; GDAL runs single-threaded here, so CPU ≈ work done). Both paths read and
write the same bytes (trustmap's windows overlap, so it reads ~1.3× the pixels); the round trip is bit-exact: **{exact}**.

| path | median wall | median CPU | MiB/s (wall) | ratio vs raw (wall) | ratio vs raw (CPU) |
|---|---|---|---|---|---|
| raw rasterio block read + write | {med["raw"]:.1f} s | {mcpu["raw"]:.1f} s | {raw_mb / med["raw"]:.0f} | 1.00× | 1.00× |
| TileGrid windows → StitchWriter (core) | {med["stitch"]:.1f} s | {mcpu["stitch"]:.1f} s | {raw_mb / med["stitch"]:.0f} | **{result["ratio_stitch_vs_raw"]:.2f}×** | **{result["cpu_ratio_stitch_vs_raw"]:.2f}×** |
| `tiles cut` to files + `tiles stitch` | {med["files"]:.1f} s | {mcpu["files"]:.1f} s | {raw_mb / med["files"]:.0f} | {result["ratio_files_vs_raw"]:.2f}× | {result["cpu_ratio_files_vs_raw"]:.2f}× |

Peak RSS (VmHWM, whole Python process incl. imports and GDAL's block cache) of a process stitching a
4-class float32 probability raster with tiles computed on the fly (target ≤ 1.5 GiB at both sizes):

| raster | peak RSS | peak blocks held |
|---|---|---|
{rows}
"""
    if args.rss_only:
        md += "\n(Throughput figures from the previous full run; memory re-measured with `--rss-only`.)\n"
    update_section("tiles", md)
    print(md)


if __name__ == "__main__":
    main()
