"""The analyst's workspace (refine init/select/import/status/export) on a real Dubai scene
with simulated crowd labels and no truth inside the workspace.

The analyst's edits are written into ``session.gpkg`` with SQLite here, as QGIS writes them
(the real QGIS does the same in ``tests/e2e/test_review_qgis.py``). Selection uses the random
baseline without auto-correction, so no model is needed and the tests stay fast; the
model-driven path (train, suggestions) has its own tests below.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon, box

from refine.cheap.edits import EditNoise, write_simulated_edits
from refine.config import parse_config
from refine.imports import import_edits
from refine.review import parse_budget, parse_class, select_queue
from refine.workspace import Workspace, init_workspace, workspace_status
from tiles.classes import load_schema
from tiles.errors import TrustmapError

FAST = {
    "regions": {"kind": "grid", "size": 400},
    "strategy": {"score": "random"},
    "autocorrect": {"enabled": False},
    "model": {"tile_size": 128, "overlap": 16},
    "train": {"steps": 4, "epochs": 0, "crop": 64, "batch_size": 2, "finetune_steps": 2},
}


@pytest.fixture(scope="module")
def inputs(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The scene, its truth, crowd-style cheap labels made from the truth, the classes."""
    d = real_data / "dubai"
    out = tmp_path_factory.mktemp("ws_inputs")
    schema = load_schema(d / "classes.yaml")
    write_simulated_edits(d / "t2_007_truth.tif", out / "cheap.tif", schema, EditNoise(noise=0.2, seed=3))
    return {
        "scene": d / "t2_007_scene.tif",
        "truth": d / "t2_007_truth.tif",
        "cheap": out / "cheap.tif",
        "classes": d / "classes.yaml",
    }


@pytest.fixture(scope="module")
def template(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ws_template") / "ws"
    init_workspace(root, inputs["scene"], [inputs["cheap"]], inputs["classes"], parse_config(FAST))
    ws = Workspace.open(root)
    select_queue(ws, parse_budget("10%"))
    return root


@pytest.fixture
def ws(template: Path, tmp_path: Path) -> Workspace:
    root = tmp_path / "ws"
    shutil.copytree(template, root)
    return Workspace.open(root)


def truth_of(inputs: dict[str, Path]) -> np.ndarray:
    with rasterio.open(inputs["truth"]) as ds:
        return ds.read(1)


def queue(ws: Workspace, where: str = "status = 'queued'") -> list[tuple[int, int, int | None]]:
    con = sqlite3.connect(ws.session)
    try:
        return con.execute(
            f'SELECT fid, region_id, current_class FROM review_queue WHERE {where} ORDER BY "rank"'
        ).fetchall()
    finally:
        con.close()


def edit(ws: Workspace, sql: str, params: tuple = ()) -> None:
    con = sqlite3.connect(ws.session)
    try:
        with con:
            con.execute(sql, params)
    finally:
        con.close()


def dominant_truth(ws: Workspace, truth: np.ndarray, region: int) -> int:
    t = truth[ws.regions.labels == region]
    t = t[t != ws.schema.ignore]
    return int(np.bincount(t).argmax())


def labels_now(ws: Workspace) -> np.ndarray:
    with ws.connect() as con:
        return ws.read_version(ws.current_version(con))[0]


def log_rows(ws: Workspace) -> list[dict]:
    con = sqlite3.connect(ws.session)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM correction_log ORDER BY fid")]
    finally:
        con.close()


def draw(ws: Workspace, geom, cls: str | int, author: str = "tester") -> None:
    from refine import gpkg

    con = sqlite3.connect(ws.session)
    try:
        with con:
            sid = gpkg.srs_id(con, "corrections")
            gpkg.insert_rows(con, "corrections", [{"geom": gpkg.encode_geometry(geom, sid), "class": str(cls), "author": author}])
    finally:
        con.close()


def pixel_box(ws: Workspace, r0: int, c0: int, r1: int, c1: int) -> Polygon:
    """A polygon whose inside holds exactly the pixel centres of rows r0..r1-1, cols c0..c1-1."""
    t = ws.scene.transform
    x0, y0 = t * (c0 + 0.1, r0 + 0.1)
    x1, y1 = t * (c1 - 0.1, r1 - 0.1)
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


# --- init ----------------------------------------------------------------------------------------
def test_init_writes_a_workspace_that_qgis_and_sqlite_can_read(template: Path, inputs) -> None:
    ws = Workspace.open(template)
    for name in ("session.gpkg", "labels/v000.tif", "labels/v000.provenance.tif", "regions.npz",
                 "quicklook.tif", "classes.yaml", "config.yaml", "review.qgs", "rounds/r001/audit.npz"):  # fmt: skip
        assert (template / name).is_file(), name
    import pyogrio

    layers = {name for name, _ in pyogrio.list_layers(ws.session)}
    assert {"review_queue", "corrections", "correction_log", "layer_styles", "rounds", "regions"} <= layers
    with rasterio.open(inputs["cheap"]) as ds:
        np.testing.assert_array_equal(labels_now(ws), ds.read(1))
    con = sqlite3.connect(ws.session)
    assert con.execute("SELECT COUNT(*) FROM regions").fetchone()[0] == ws.regions.n
    styles = dict(con.execute("SELECT f_table_name, styleQML FROM layer_styles WHERE useAsDefault = 1"))
    assert "graduatedSymbol" in styles["review_queue"] and "categorizedSymbol" in styles["corrections"]
    con.close()


def test_init_refuses_a_folder_in_use_and_leaves_nothing_when_it_fails(inputs, tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    cfg = parse_config(FAST)
    with pytest.raises(TrustmapError, match="not empty"):
        init_workspace(tmp_path / "busy", inputs["scene"], [inputs["cheap"]], inputs["classes"], cfg)
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]
    other = tmp_path / "other.tif"  # cheap labels on another grid
    with rasterio.open(inputs["cheap"]) as ds:
        profile = {**ds.profile, "width": ds.width - 10}
        data = ds.read(1)[:, :-10]
    with rasterio.open(other, "w", **profile) as dst:
        dst.write(data, 1)
    with pytest.raises(TrustmapError, match="does not align with the scene"):
        init_workspace(tmp_path / "new", inputs["scene"], [other], inputs["classes"], cfg)
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# --- select -------------------------------------------------------------------------------------------
def test_select_queues_regions_as_polygons_of_exactly_their_pixels(ws: Workspace) -> None:
    rows = queue(ws)
    assert rows
    con = sqlite3.connect(ws.session)
    status = dict(con.execute("SELECT region_id, status FROM regions"))
    blobs = con.execute('SELECT region_id, geom FROM review_queue ORDER BY "rank"').fetchall()
    con.close()
    assert {rid for _, rid, _ in rows} == {r for r, s in status.items() if s == "queued"}
    from refine import gpkg

    s = ws.scene
    for rid, blob in blobs[:10]:
        geom = gpkg.decode_geometry(blob)
        burnt = rasterio.features.geometry_mask([geom], (s.height, s.width), s.transform, invert=True)
        np.testing.assert_array_equal(burnt, ws.regions.labels == rid)
    budget = 0.10 * ws.regions.cost.sum()
    assert ws.regions.cost[[rid for _, rid, _ in rows]].sum() <= budget + 1e-9


def test_select_never_queues_a_region_twice(ws: Workspace) -> None:
    first = {rid for _, rid, _ in queue(ws)}
    select_queue(ws, parse_budget("10%"))
    second = {rid for _, rid, _ in queue(ws, "round = 2")}
    assert second and not first & second


@pytest.mark.parametrize(
    ("text", "amount", "unit"),
    [("2%", 0.02, "fraction"), ("1.5ha", 15000, "m2"), ("5000m2", 5000, "m2"), ("20000px", 20000, "pixels"),
     ("50", 50, "regions"), ("12 regions", 12, "regions")],
)  # fmt: skip
def test_budgets_parse(text: str, amount: float, unit: str) -> None:
    b = parse_budget(text)
    assert b.unit == unit and b.amount == pytest.approx(amount)


@pytest.mark.parametrize("text", ["", "two", "-3%", "0", "120%", "2.5 regions", "5 acres"])
def test_bad_budgets_blame_the_flag(text: str) -> None:
    with pytest.raises(TrustmapError, match="--budget"):
        parse_budget(text)


def test_class_names_and_codes(real_data: Path) -> None:
    schema = load_schema(real_data / "dubai" / "classes.yaml")
    assert parse_class("3", schema) == 3 and parse_class(3, schema) == 3 and parse_class(3.0, schema) == 3
    assert parse_class("Water", schema) == 5 and parse_class(" road ", schema) == 3
    assert parse_class("", schema) is None and parse_class(None, schema) is None
    assert parse_class("SKIP", schema) == "skip"
    for bad, msg in (("9", "unknown class code 9"), ("lake", "unknown class 'lake'"), ("2.5", "unknown class")):
        with pytest.raises(ValueError, match=msg):
            parse_class(bad, schema)


# --- import ---------------------------------------------------------------------------------------------
def test_import_burns_the_answers_and_logs_every_one(ws: Workspace, inputs) -> None:
    truth = truth_of(inputs)
    before = labels_now(ws)
    rows = queue(ws)[:12]
    answered = {}
    for fid, rid, cur in rows:
        dom = dominant_truth(ws, truth, rid)
        if dom != cur:
            edit(ws, "UPDATE review_queue SET corrected_class = ? WHERE fid = ?", (ws.schema.classes[dom - 1].name, fid))
            answered[rid] = dom
        else:
            edit(ws, "UPDATE review_queue SET reviewed = 1 WHERE fid = ?", (fid,))
    r = import_edits(ws, author="ana")
    after = labels_now(ws)
    changed = after != before
    assert r.version == (1 if changed.any() else 0)
    inside = ws.regions.mask(list(answered))
    assert not (changed & ~inside).any()  # nothing changes outside the answered regions
    for rid, dom in answered.items():
        assert (after[ws.regions.labels == rid] == dom).all()
    m = truth != ws.schema.ignore
    assert ((after != truth) & m).sum() < ((before != truth) & m).sum()
    log = log_rows(ws)
    assert len(log) == len(rows) and {x["author"] for x in log} == {"ana"}
    names = {c.code: c.name for c in ws.schema.classes}
    for x in log:  # what the map labels each correction with
        assert x["summary"] == "label right" if x["class_code"] is None else (
            x["summary"].endswith(f"→ {names[x['class_code']]}") or x["summary"].endswith("more)")
            or x["summary"] == f"{names[x['class_code']]} (no change)"
        )
    assert sum(x["pixels_changed"] for x in log) == int(changed.sum()) == r.pixels_changed
    with ws.connect() as con:
        _, prov = ws.read_version(ws.current_version(con))
        status = dict(con.execute("SELECT region_id, status FROM regions"))
    ids = {x["fid"]: x for x in log}
    assert set(np.unique(prov[changed]).tolist()) <= set(ids)  # every change traces to a log row
    assert all(status[rid] == "reviewed" for _, rid, _ in rows)
    # A second import of the same edits changes nothing.
    again = import_edits(ws, author="ana")
    assert again.version == r.version and again.imported == 0 and len(log_rows(ws)) == len(log)


def test_bad_edits_are_named_and_the_good_ones_kept(ws: Workspace) -> None:
    (f1, r1, _), (f2, r2, _), (f3, r3, _) = queue(ws)[:3]
    edit(ws, "UPDATE review_queue SET corrected_class = 'lake' WHERE fid = ?", (f1,))
    edit(ws, "UPDATE review_queue SET corrected_class = 'water' WHERE fid = ?", (f2,))
    edit(ws, "UPDATE review_queue SET corrected_class = 'skip' WHERE fid = ?", (f3,))
    bowtie = Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])
    c = ws.scene.transform * (50, 50)
    draw(ws, shapely.affinity.translate(shapely.affinity.scale(bowtie, 20, 20), *c), "road")
    draw(ws, box(0, 0, 10, 10), "road")  # far outside the scene (UTM 40N)
    draw(ws, pixel_box(ws, 10, 10, 20, 20), "vegetation")
    draw(ws, pixel_box(ws, 30, 30, 40, 40), "")
    r = import_edits(ws)
    text = "\n".join(r.invalid)
    assert f"review_queue fid {f1}: unknown class 'lake'" in text
    assert "invalid geometry (Self-intersection" in text and "outside the scene" in text and "no class" in text
    assert len(r.invalid) == 4 and r.imported == 2 and r.skipped == 1
    after = labels_now(ws)
    assert (after[ws.regions.labels == r2] == 5).all() and (after[10:20, 10:20] == 4).all()
    con = sqlite3.connect(ws.session)
    st = dict(con.execute("SELECT fid, status FROM review_queue WHERE fid IN (?, ?, ?)", (f1, f2, f3)))
    region = dict(con.execute("SELECT region_id, status FROM regions WHERE region_id IN (?, ?)", (r2, r3)))
    con.close()
    assert st[f1].startswith("invalid: unknown class") and st[f2] == "corrected v1" and st[f3] == "skipped"
    assert region == {r2: "reviewed", r3: "skipped"}
    # The analyst fixes the refused row; the next import takes it, and only it.
    edit(ws, "UPDATE review_queue SET corrected_class = '2' WHERE fid = ?", (f1,))
    r2nd = import_edits(ws)
    assert r2nd.imported == 1 and (labels_now(ws)[ws.regions.labels == r1] == 2).all()


def test_edits_from_a_file_in_another_crs_land_where_they_were_drawn(ws: Workspace, tmp_path: Path) -> None:
    poly = pixel_box(ws, 100, 200, 130, 240)
    frame = gpd.GeoDataFrame({"class": ["water"]}, geometry=[poly], crs=ws.scene.crs.to_wkt()).to_crs(4326)
    frame.to_file(tmp_path / "edits.geojson")
    r = import_edits(ws, edits_file=tmp_path / "edits.geojson")
    after = labels_now(ws)
    assert r.imported == 1
    np.testing.assert_array_equal(after[101:129, 201:239], 5)  # the inside, clear of the reprojection's wiggle
    assert import_edits(ws, edits_file=tmp_path / "edits.geojson").imported == 0
    frame.to_file(tmp_path / "bad.geojson")
    with pytest.raises(TrustmapError, match="no field 'klass'"):
        import_edits(ws, edits_file=tmp_path / "bad.geojson", class_field="klass")


def test_edits_to_an_older_round_count_against_that_round(ws: Workspace) -> None:
    fid, rid, _ = queue(ws)[0]
    select_queue(ws, parse_budget("5%"))  # round 2 queued before round 1 was answered
    edit(ws, "UPDATE review_queue SET corrected_class = '1' WHERE fid = ?", (fid,))
    import_edits(ws)
    (row,) = [x for x in log_rows(ws) if x["region_id"] == rid]
    assert row["round"] == 1 and row["class_code"] == 1


def test_all_reviewed_confirms_the_rest_of_the_queue(ws: Workspace) -> None:
    rows = queue(ws)
    edit(ws, "UPDATE review_queue SET corrected_class = '5' WHERE fid = ?", (rows[0][0],))
    r = import_edits(ws, all_reviewed=True)
    assert r.imported == 1 and r.confirmed == len(rows) - 1
    assert queue(ws) == []
    st = workspace_status(ws)
    assert st["regions"]["reviewed"] == len(rows) and st["budget_spent"]["queued"] == 0


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrections_change_pixels_only_where_the_analyst_answered(template: Path, tmp_path_factory, data) -> None:
    root = tmp_path_factory.mktemp("prop") / "ws"
    shutil.copytree(template, root)
    ws = Workspace.open(root)
    rows = queue(ws)
    picks = data.draw(st.lists(st.sampled_from(rows), max_size=8, unique=True))
    codes = data.draw(st.lists(st.sampled_from(ws.schema.codes), min_size=len(picks), max_size=len(picks)))
    for (fid, _, _), code in zip(picks, codes, strict=True):
        edit(ws, "UPDATE review_queue SET corrected_class = ? WHERE fid = ?", (str(code), fid))
    r0, c0 = data.draw(st.integers(0, 400)), data.draw(st.integers(0, 400))
    drawn_code = data.draw(st.sampled_from(ws.schema.codes))
    draw(ws, pixel_box(ws, r0, c0, r0 + 20, c0 + 20), drawn_code)
    before = labels_now(ws)
    import_edits(ws)
    after = labels_now(ws)
    expected = before.copy()
    for (_, rid, _), code in zip(picks, codes, strict=True):
        expected[ws.regions.labels == rid] = code
    valid = ws.scene.valid_mask()
    block = np.zeros_like(valid)
    block[r0 : r0 + 20, c0 : c0 + 20] = True
    expected[block & valid] = drawn_code
    np.testing.assert_array_equal(after, expected)


# --- bad workspaces --------------------------------------------------------------------------------
def test_another_scene_is_refused(ws: Workspace, real_data: Path) -> None:
    with pytest.raises(TrustmapError, match="not the workspace's scene: its width, height"):
        Workspace.open(ws.root, real_data / "dubai" / "t3_002_scene.tif")


def test_a_moved_scene_is_found_again_with_scene(ws: Workspace, inputs, tmp_path: Path) -> None:
    moved = tmp_path / "moved.tif"
    shutil.copyfile(inputs["scene"], moved)
    edit(ws, "UPDATE workspace SET value = ? WHERE key = 'scene'", (json.dumps(str(tmp_path / "gone.tif")),))
    with pytest.raises(TrustmapError, match="pass its new path with --scene"):
        Workspace.open(ws.root)
    assert Workspace.open(ws.root, moved).scene_path == moved


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("ALTER TABLE review_queue DROP COLUMN corrected_class", "lacks the field(s) corrected_class"),
        ("DROP TABLE label_versions", "lacks the table(s) label_versions"),
        ("UPDATE workspace SET value = 'not json' WHERE key = 'scene'", "edited into an invalid state"),
        ("UPDATE workspace SET value = '\"trustmap.refine.workspace/0\"' WHERE key = 'format'", "workspace format"),
    ],
)
def test_a_hand_edited_state_is_refused_and_left_as_it_was(ws: Workspace, damage: str, message: str) -> None:
    edit(ws, damage)
    data = ws.session.read_bytes()
    with pytest.raises(TrustmapError, match=re.escape(message)):
        Workspace.open(ws.root)
    assert ws.session.read_bytes() == data


def test_empty_label_versions_and_bad_region_ids_are_named(ws: Workspace) -> None:
    fid = queue(ws)[0][0]
    edit(ws, "UPDATE review_queue SET corrected_class = '1', region_id = 999999 WHERE fid = ?", (fid,))
    r = import_edits(ws)
    assert r.invalid == [f"review_queue fid {fid}: region 999999 of round 1 is not in this workspace"]
    edit(ws, "DELETE FROM label_versions")
    with pytest.raises(TrustmapError, match="no label version"):
        import_edits(ws)


def test_an_empty_queue_imports_nothing_and_a_full_scene_selects_nothing(ws: Workspace) -> None:
    r = import_edits(ws)
    assert r.imported == r.confirmed == 0 and r.version == 0
    edit(ws, "UPDATE regions SET status = 'reviewed'")
    with pytest.raises(TrustmapError, match="nothing left to select"):
        select_queue(ws, parse_budget("5%"))


def test_a_second_command_is_refused_while_one_runs(ws: Workspace) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from refine.lock import exclusive\n"
         "with exclusive(Path(sys.argv[1]), 'refine import'):\n    print('held', flush=True); time.sleep(60)",
         str(ws.root)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        data = ws.session.read_bytes()
        with pytest.raises(TrustmapError, match=rf"in use by PID {holder.pid} \(refine import, started"):
            import_edits(ws)
        assert ws.session.read_bytes() == data
    finally:
        holder.kill()
        holder.wait()


# --- the model's suggestions ----------------------------------------------------------------------
def test_suggestions_are_made_accepted_rejected_and_never_made_again(inputs, tmp_path: Path) -> None:
    from refine.workspace import set_meta, train_workspace

    cfg = {**FAST, "autocorrect": {"enabled": True, "min_confidence": 0.0, "min_support": 1, "audit_share": 0.2}}
    root = tmp_path / "ws"
    init_workspace(root, inputs["scene"], [inputs["cheap"]], inputs["classes"], parse_config(cfg))
    ws = Workspace.open(root)
    train_workspace(ws)
    with ws.connect() as con:  # an analyst's earlier audits said the model was always right
        set_meta(con, "tally", {"total": [1] * 100, "right": [1] * 100})
    select_queue(ws, parse_budget("2%"))
    sug = queue(ws, "kind = 'suggestion'")
    assert sug, "a confident model with a perfect audit record makes suggestions"
    (fa, _, _), (fr, rr, _) = sug[0], sug[1]
    con = sqlite3.connect(ws.session)
    suggested = dict(con.execute("SELECT fid, suggested_class FROM review_queue WHERE kind = 'suggestion'"))
    con.close()
    edit(ws, "UPDATE review_queue SET corrected_class = ? WHERE fid = ?", (str(suggested[fa]), fa))
    edit(ws, "UPDATE review_queue SET reviewed = 1 WHERE fid = ?", (fr,))
    before = labels_now(ws)
    r = import_edits(ws)
    after = labels_now(ws)
    assert r.rejected == 1 and r.imported == 1
    changed = after != before
    assert changed.any() and (after[changed] == suggested[fa]).all()
    assert not (changed & (ws.regions.labels == rr)).any()
    con = sqlite3.connect(ws.session)
    assert con.execute("SELECT region_id, class_code FROM rejections").fetchall() == [(rr, suggested[fr])]
    con.close()
    select_queue(ws, parse_budget("2%"))
    con = sqlite3.connect(ws.session)
    classes = [c for (c,) in con.execute(
        "SELECT suggested_class FROM review_queue WHERE kind = 'suggestion' AND round = 2 AND region_id = ?", (rr,))]
    con.close()
    assert suggested[fr] not in classes  # the rejected suggestion is not made again


def test_config_of_the_workspace_is_kept(template: Path) -> None:
    data = yaml.safe_load((template / "config.yaml").read_text())
    assert data["regions"]["kind"] == "grid" and data["strategy"]["score"] == "random"
