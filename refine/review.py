"""The review queue: a round's proposal as ranked polygons in QGIS, styled and editable.

``refine select`` turns a :class:`refine.rounds.Proposal` into features of the
``review_queue`` layer of ``session.gpkg``: one polygon per region (vectorised from the
region-id raster), with its current class, the model's suggested class, its score and an
empty ``corrected_class``. Where the model is confident enough that a label is wrong (the
threshold is calibrated on the analyst's earlier answers to the audit sample, as in
:mod:`refine.autocorrect`), it adds *suggestions*: the exact pixels it would relabel, as
polygons the analyst accepts (``corrected_class`` = the suggestion) or rejects
(``reviewed`` = 1 with no class). Nothing the model suggests reaches the labels without
the analyst's answer, and a rejected suggestion is never made again.

It also writes ``review.qgs``: the scene's RGB quick-look, the current labels, the queue
and the editable ``corrections`` layer, in one project.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio.features
from rasterio.windows import Window
from shapely.geometry import MultiPolygon

from refine import gpkg
from refine.regions import Regions
from refine.workspace import CORRECTIONS, LOG, QUEUE, Echo, Workspace
from tiles.classes import ClassSchema
from tiles.errors import TrustmapError
from tiles.qgis import vector_style_tail
from tiles.vectorize import mask_polygon

MAX_SUGGESTIONS = 200
"""Most suggestion polygons one select adds (the largest first): a queue is read by a person."""
MIN_SUGGESTION_PIXELS = 4


# --- budgets ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """How much one select may queue: a share of the scene, an area, or a count of regions."""

    amount: float
    unit: str
    """``fraction`` (of the regions' total cost), ``m2``, ``pixels`` or ``regions``."""

    def describe(self) -> str:
        return {
            "fraction": f"{self.amount:.2%} of the scene",
            "m2": f"{self.amount:g} m²",
            "pixels": f"{self.amount:g} px",
            "regions": f"{self.amount:g} regions",
        }[self.unit]


_BUDGET = re.compile(
    r"^\s*(?P<n>\d+(?:\.\d*)?|\.\d+)\s*(?P<u>%|ha|km2|m2|m²|px|pixels?|regions?)?\s*$", re.I
)


def parse_budget(text: str) -> Budget:
    """``2%``, ``1.5ha``, ``5000m2``, ``20000px`` or ``50`` / ``50 regions``."""
    m = _BUDGET.match(str(text))
    if not m:
        raise TrustmapError(
            f"--budget {text!r}: give a share (2%), an area (1.5ha, 5000m2), pixels (20000px) "
            "or a number of regions (50)"
        )
    n, unit = float(m["n"]), (m["u"] or "regions").lower()
    if n <= 0:
        raise TrustmapError(f"--budget {text!r}: must be more than 0")
    if unit == "%":
        if n > 100:
            raise TrustmapError(f"--budget {text!r}: a share cannot exceed 100%")
        return Budget(n / 100.0, "fraction")
    if unit in ("ha", "km2", "m2", "m²"):
        return Budget(n * {"ha": 1e4, "km2": 1e6}.get(unit, 1.0), "m2")
    if unit.startswith("px") or unit.startswith("pixel"):
        return Budget(n, "pixels")
    if n != int(n):
        raise TrustmapError(f"--budget {text!r}: a count of regions must be whole")
    return Budget(n, "regions")


def budget_in_cost(budget: Budget, regions: Regions, pixel_area: float) -> tuple[float, Regions]:
    """The budget in the regions' cost unit, and the regions to spend it on (a count of
    regions spends unit costs)."""
    from dataclasses import replace

    if budget.unit == "regions":
        return budget.amount, replace(regions, cost=np.ones(regions.n), cost_unit="regions")
    if budget.unit == "fraction":
        return budget.amount * float(regions.cost.sum()), regions
    pixels = budget.amount / pixel_area if budget.unit == "m2" else budget.amount
    if regions.cost_unit != "pixels":
        raise TrustmapError(
            f"an area budget needs regions costed in pixels, these cost {regions.cost_unit}; "
            "give a share (2%) or a count of regions"
        )
    return pixels, regions


# --- classes -------------------------------------------------------------------------------------
SKIP = "skip"


def parse_class(value: Any, schema: ClassSchema) -> int | str | None:
    """A class code from a code or an unambiguous class name; ``"skip"``; None for empty.

    Raises ``ValueError`` with a message for anything else.
    """
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        text = str(int(value))
    elif isinstance(value, float):
        if not np.isfinite(value) or value != int(value):
            raise ValueError(f"class {value!r} is not a class code")
        text = str(int(value))
    else:
        text = str(value).strip()
    if not text:
        return None
    if text.lower() == SKIP:
        return SKIP
    if re.fullmatch(r"[+-]?\d+(\.0*)?", text):
        code = int(float(text))
        if code in schema.codes:
            return code
        raise ValueError(f"unknown class code {code}; the codes are {schema.codes}")
    hits = [c.code for c in schema.classes if c.name.lower() == text.lower()]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise ValueError(f"class name {text!r} is ambiguous (codes {hits}); give the code")
    names = ", ".join(f"{c.code}={c.name}" for c in schema.classes)
    raise ValueError(f"unknown class {text!r}; use a code or a name ({names})")


# --- polygons --------------------------------------------------------------------------------------
def region_polygon(regions: Regions, region_id: int, transform: Any) -> MultiPolygon | None:
    """Region ``region_id`` as a polygon, vectorised from the region-id raster in its bbox."""
    from tiles.vectorize import region_polygon as polygon_of

    return polygon_of(regions.labels, region_id, regions.bbox[region_id], transform)


def dominant(values: np.ndarray, minlength: int) -> tuple[int, float]:
    """(most frequent value, its share) among non-negative ``values``; (-1, 0) if none."""
    v = values[values >= 0]
    if not v.size:
        return -1, 0.0
    counts = np.bincount(v, minlength=minlength)
    k = int(np.argmax(counts))
    return k, float(counts[k] / v.size)


# --- styles ------------------------------------------------------------------------------------------
_QUEUE_COLOURS = ("#ffe45c", "#ffa23a", "#f5612c", "#d1202f", "#8c0a4b")
"""Outline colours from low to high priority: warm hues, apart from the class palette."""


def _option_map(parent: ET.Element, name: str | None = None) -> ET.Element:
    attrs = {"type": "Map"} | ({"name": name} if name else {})
    return ET.SubElement(parent, "Option", attrs)


def _line_symbol(name: str, colour: str, width: float, dashed: bool = False) -> ET.Element:
    """An outline-only fill symbol: the imagery stays visible inside the polygon."""
    from tiles.qgis import simple_fill_symbol

    return simple_fill_symbol(name, {
        "color": "0,0,0,0", "style": "no", "outline_color": _rgba(colour),
        "outline_width": f"{width:g}", "outline_width_unit": "MM",
        "outline_style": "dash" if dashed else "solid", "joinstyle": "bevel",
    })  # fmt: skip


def _rgba(colour: str, alpha: int = 255) -> str:
    h = colour.lstrip("#")
    return f"{int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{alpha}"


def _class_widget(field: str, schema: ClassSchema) -> ET.Element:
    """A drop-down of class names that stores the code (QGIS's ValueMap widget)."""
    f = ET.Element("field", name=field, configurationFlags="None")
    widget = ET.SubElement(f, "editWidget", type="ValueMap")
    config = ET.SubElement(widget, "config")
    top = _option_map(config)
    lst = ET.SubElement(top, "Option", type="List", name="map")
    for label, value in [("(not set)", ""), *[(f"{c.code} {c.name}", str(c.code)) for c in schema.classes], ("skip", SKIP)]:  # fmt: skip
        entry = _option_map(lst)
        ET.SubElement(entry, "Option", type="QString", name=label, value=value)
    return f


def _checkbox_widget(field: str) -> ET.Element:
    f = ET.Element("field", name=field, configurationFlags="None")
    widget = ET.SubElement(f, "editWidget", type="CheckBox")
    config = ET.SubElement(widget, "config")
    top = _option_map(config)
    ET.SubElement(top, "Option", type="QString", name="CheckedState", value="1")
    ET.SubElement(top, "Option", type="QString", name="UncheckedState", value="0")
    return f


def queue_style(schema: ClassSchema, scores: list[float]) -> str:
    """Graduated outlines by ``score`` (5 quantile classes of this queue), with the edit
    widgets the analyst needs: a class drop-down and a "reviewed" check box."""
    from tiles.qgis import style_document

    finite = np.asarray([s for s in scores if s is not None and np.isfinite(s)], float)
    if finite.size:
        edges = np.unique(np.quantile(finite, np.linspace(0, 1, len(_QUEUE_COLOURS) + 1)))
    else:
        edges = np.array([0.0, 1.0])
    if edges.size < 2:
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    renderer = ET.Element(
        "renderer-v2", type="graduatedSymbol", attr="score", graduatedMethod="GraduatedColor",
        symbollevels="0", enableorderby="0", forceraster="0", referencescale="-1",
    )  # fmt: skip
    ranges = ET.SubElement(renderer, "ranges")
    symbols = ET.SubElement(renderer, "symbols")
    k = edges.size - 1
    for i in range(k):
        lo, hi = float(edges[i]), float(edges[i + 1])
        colour = _QUEUE_COLOURS[round(i * (len(_QUEUE_COLOURS) - 1) / max(k - 1, 1))]
        ET.SubElement(
            ranges, "range", lower=f"{lo:.6g}", upper=f"{hi:.6g}", symbol=str(i),
            label=f"priority {lo:.3g} – {hi:.3g}", render="true",
        )  # fmt: skip
        symbols.append(_line_symbol(str(i), colour, 0.5 + 0.25 * i))
    ET.SubElement(renderer, "mode", name="quantile")
    ET.SubElement(renderer, "rotation")
    ET.SubElement(renderer, "sizescale")
    fields = ET.Element("fieldConfiguration")
    fields.append(_class_widget("corrected_class", schema))
    fields.append(_checkbox_widget("reviewed"))
    labeling = _labeling("rank")
    return style_document([renderer, labeling, fields, *vector_style_tail()])


def corrections_style(schema: ClassSchema, attr: str = "class") -> str:
    """Categorised by class (the trustmap class style, half-transparent fills), with a class
    drop-down on the analyst's ``class`` field."""
    from tiles.qgis import _vector_style_nodes, style_document

    nodes = _vector_style_nodes(schema, attr=attr)
    if attr == "class":
        fields = ET.Element("fieldConfiguration")
        fields.append(_class_widget("class", schema))
        nodes.insert(1, fields)
    return style_document(nodes)


def _labeling(field: str) -> ET.Element:
    labeling = ET.Element("labeling", type="simple")
    settings = ET.SubElement(labeling, "settings", calloutType="simple")
    ET.SubElement(
        settings, "text-style", fieldName=field, fontSize="9", textColor="255,255,255,255",
        isExpression="0", fontWeight="75", namedStyle="Bold",
    )  # fmt: skip
    buf = ET.SubElement(settings, "text-buffer")
    buf.set("bufferDraw", "1")
    buf.set("bufferSize", "0.8")
    buf.set("bufferColor", "0,0,0,255")
    ET.SubElement(settings, "placement", placement="1", offsetType="0")
    ET.SubElement(settings, "rendering", obstacle="1", scaleVisibility="0")
    return labeling


_CHANGE_COLOUR = "#00e5ff"
"""Changes made by the analyst: cyan, apart from the class colours and the queue's warm hues."""


def changes_style() -> str:
    """Cyan outlines labelled with the change (``land → water``) of each imported correction."""
    from tiles.qgis import style_document

    renderer = ET.Element(
        "renderer-v2", type="singleSymbol", symbollevels="0", enableorderby="0",
        forceraster="0", referencescale="-1",
    )  # fmt: skip
    ET.SubElement(renderer, "symbols").append(_line_symbol("0", _CHANGE_COLOUR, 0.6))
    ET.SubElement(renderer, "rotation")
    ET.SubElement(renderer, "sizescale")
    return style_document([renderer, _labeling("summary"), *vector_style_tail()])


def reviewed_style() -> str:
    """Thin grey outlines: regions already answered, kept in view for context."""
    from tiles.qgis import style_document

    renderer = ET.Element(
        "renderer-v2", type="singleSymbol", symbollevels="0", enableorderby="0",
        forceraster="0", referencescale="-1",
    )  # fmt: skip
    symbols = ET.SubElement(renderer, "symbols")
    symbols.append(_line_symbol("0", "#d8d8d8", 0.3, dashed=True))
    ET.SubElement(renderer, "rotation")
    ET.SubElement(renderer, "sizescale")
    return style_document([renderer, *vector_style_tail()])


def write_review_project(ws: Workspace, labels: Path, scores: list[float]) -> Path:
    """``review.qgs``: the queue still to answer on top (ranked, outlined by priority), the
    corrections to draw in, the changes made so far (cyan, labelled from → to), what was
    answered without a change (grey), the current labels at half opacity over the scene's
    quick-look; the whole correction log by class is there, switched off."""
    from tiles.qgis import ProjectLayer, write_project

    layers = [
        ProjectLayer(ws.session, "review queue (to answer)", "vector", layer=QUEUE, subset="\"status\" = 'queued'",
                     style_qml=queue_style(ws.schema, scores)),
        ProjectLayer(ws.session, "corrections (draw here)", "vector", layer=CORRECTIONS,
                     style_qml=corrections_style(ws.schema)),
        ProjectLayer(ws.session, "review queue (answered)", "vector", layer=QUEUE, subset="\"status\" <> 'queued'",
                     style_qml=reviewed_style()),
        ProjectLayer(ws.session, "changes made (from → to)", "vector", layer=LOG, subset='"pixels_changed" > 0',
                     style_qml=changes_style()),
        ProjectLayer(ws.session, "imported corrections (log, by class)", "vector", layer=LOG,
                     style_qml=corrections_style(ws.schema, "class_code"), visible=False),
        ProjectLayer(labels, f"labels ({labels.stem})", "raster", schema=ws.schema, opacity=0.45),
        ProjectLayer(ws.quicklook, "scene quick-look", "raster"),
    ]  # fmt: skip
    s = ws.scene
    bounds = rasterio.transform.array_bounds(s.height, s.width, s.transform)
    extent = (bounds[0], bounds[1], bounds[2], bounds[3])
    return write_project(ws.project, layers, crs=s.crs, extent=extent, title="trustmap review")


# --- select --------------------------------------------------------------------------------------------
@dataclass
class SelectResult:
    round: int
    queued: int
    audit: int
    suggestions: int
    spent: float
    unit: str
    threshold: float | None
    project: Path


def select_queue(
    ws: Workspace,
    budget: Budget,
    *,
    strategy: str | None = None,
    echo: Echo | None = None,
) -> SelectResult:
    """Build the next round's review queue with the latest model; commit it; write the project."""
    from refine.autocorrect import (
        ConfidenceTally,
        choose_threshold,
        propose_corrections,
        row_windows,
    )
    from refine.rounds import propose
    from refine.strategies import RoundContext, get_strategy

    echo = echo or (lambda _: None)
    cfg, schema = ws.config, ws.schema
    strat = get_strategy(strategy or cfg.strategy.score)
    if strat.needs_mc:
        raise TrustmapError(f"--strategy {strat.name}: MC-dropout strategies are for simulations")
    if strat.name == "annotator_disagreement":
        raise TrustmapError("--strategy annotator_disagreement: the workspace keeps the fused labels only")
    with ws.locked("refine select"), ws.connect() as con:
        version = ws.current_version(con)
        labels, provenance = ws.read_version(version)
        loaded = ws.load_model(con)
        if loaded is None and (strat.needs_model or cfg.autocorrect.enabled):
            raise TrustmapError(
                "the workspace has no model yet: run `refine train` first (or `refine run`)",
                ws.root,
            )
        model_id, model = loaded if loaded is not None else (None, None)
        status = ws.region_status(con)
        r = int(con.execute("SELECT COALESCE(MAX(round), 0) FROM rounds").fetchone()[0]) + 1
        scene, valid = ws.scene, ws.scene.valid_mask()
        pixel_area = abs(scene.transform.a * scene.transform.e)
        amount, regions = budget_in_cost(budget, ws.regions, pixel_area)
        skip = status != "open"
        if not (~skip).any():
            raise TrustmapError("every region is reviewed or queued: nothing left to select", ws.root)
        probs_path = None
        if model is not None:
            ws.work.mkdir(exist_ok=True)
            probs_path = ws.work / "probs.tif"
            model.predict_proba(scene, probs_path, seed=cfg.seed + r, desc=f"predict r{r}", compress="none")
        ctx = RoundContext(
            round=r, config=cfg, schema=schema, scene=scene, regions=regions, labels=labels, valid=valid,
            reviewed=status == "reviewed", model=model, probs_path=probs_path, seed=cfg.seed * 7919 + r,
        )  # fmt: skip
        selection, audit, values, _ = propose(strat, ctx, amount, skip, labels)
        if not selection.ids.size:
            raise TrustmapError(
                f"no open region fits a budget of {budget.describe()} (the cheapest costs "
                f"{float(regions.cost[~skip].min()):g} {regions.cost_unit})"
            )
        lut = schema.code_to_index()
        codes = np.asarray(schema.codes, np.uint8)
        probs = ctx.probs() if probs_path is not None else None
        pred = None
        conf = None
        if probs is not None:
            from refine.autocorrect import _argmax_conf

            pred, conf = _argmax_conf(probs)
        # Queue order: the strategy's picks, with the audit regions mixed in at seeded
        # random places, so the analyst cannot tell them apart (their answers stay unbiased).
        rng = np.random.default_rng([cfg.seed, r, 0x0E0E])
        main = [int(i) for i in selection.ids if i not in set(audit.tolist())]
        order = list(main)
        for a in audit.tolist():
            order.insert(int(rng.integers(0, len(order) + 1)), int(a))
        features = []
        for rank, rid in enumerate(order, start=1):
            geom = region_polygon(ws.regions, rid, scene.transform)
            if geom is None:
                continue
            r0, c0, r1, c1 = (int(v) for v in ws.regions.bbox[rid])
            inside = ws.regions.labels[r0:r1, c0:c1] == rid
            cur, _ = dominant(lut[labels[r0:r1, c0:c1][inside]].astype(np.int64), schema.num_classes)
            sug, share = (-1, 0.0)
            if pred is not None:
                sug, share = dominant(pred[r0:r1, c0:c1][inside].astype(np.int64), schema.num_classes)
            features.append({
                "rank": rank, "round": r, "region_id": rid, "kind": "review",
                "score": float(values[rid]) if values is not None and np.isfinite(values[rid]) else None,
                "current_class": int(codes[cur]) if cur >= 0 else None,
                "current_name": schema.classes[cur].name if cur >= 0 else None,
                "suggested_class": int(codes[sug]) if sug >= 0 else None,
                "suggested_name": schema.classes[sug].name if sug >= 0 else None,
                "suggested_share": share, "area_m2": float(ws.regions.area[rid]) * pixel_area,
                "status": "queued", "reviewed": 0, "geom": geom,
            })  # fmt: skip
        # Suggestions: where the model is confident enough (calibrated on audit answers).
        threshold = None
        sug_pixels = np.zeros(0, np.int64)
        sug_codes = np.zeros(0, np.uint8)
        sug_region = np.zeros(0, np.int64)
        a = cfg.autocorrect
        tally_json = ws_meta(con).get("tally")
        if a.enabled and probs is not None and tally_json:
            tally = ConfidenceTally.from_dict(tally_json)
            threshold, _info = choose_threshold(tally, a.precision, a.min_support, a.min_confidence)
        if threshold is not None:
            reviewed_px = ws.reviewed_pixels(con, provenance)
            queued_px = ws.regions.mask(np.flatnonzero(status == "queued")) | ws.regions.mask(selection.ids)
            protected = reviewed_px | queued_px | ~valid
            idx = np.full(labels.shape, -1, np.int16)
            for rows in row_windows(*labels.shape, probs.shape[0]):
                idx[rows] = propose_corrections(probs[:, rows], lut[labels[rows]], protected[rows], threshold)
            rejected = con.execute("SELECT region_id, class_code FROM rejections").fetchall()
            for rid, code in rejected:
                k = lut[code]
                if 0 <= rid < ws.regions.n and k >= 0:
                    r0, c0, r1, c1 = (int(v) for v in ws.regions.bbox[rid])
                    sub = idx[r0:r1, c0:c1]
                    sub[(ws.regions.labels[r0:r1, c0:c1] == rid) & (sub == k)] = -1
            flat = np.flatnonzero(idx.reshape(-1) >= 0)
            rid_flat = ws.regions.labels.reshape(-1)[flat]
            keep = rid_flat >= 0
            flat, rid_flat = flat[keep], rid_flat[keep]
            counts = np.bincount(rid_flat, minlength=ws.regions.n)
            cand = np.flatnonzero(counts >= MIN_SUGGESTION_PIXELS)
            cand = cand[np.argsort(-counts[cand], kind="stable")][:MAX_SUGGESTIONS]
            chosen = np.isin(rid_flat, cand)
            sug_pixels, sug_region = flat[chosen], rid_flat[chosen]
            sug_codes = codes[idx.reshape(-1)[sug_pixels]]
            rank0 = len(features)
            for j, rid in enumerate(cand.tolist(), start=1):
                r0, c0, r1, c1 = (int(v) for v in ws.regions.bbox[rid])
                sub = idx[r0:r1, c0:c1]
                inside = (ws.regions.labels[r0:r1, c0:c1] == rid) & (sub >= 0)
                k, share = dominant(sub[inside].astype(np.int64), schema.num_classes)
                geom = mask_polygon(inside, Window(c0, r0, c1 - c0, r1 - r0), scene.transform)
                cur, _ = dominant(lut[labels[r0:r1, c0:c1][inside]].astype(np.int64), schema.num_classes)
                features.append({
                    "rank": rank0 + j, "round": r, "region_id": rid, "kind": "suggestion",
                    "score": float(conf[r0:r1, c0:c1][inside].mean()),
                    "current_class": int(codes[cur]) if cur >= 0 else None,
                    "current_name": schema.classes[cur].name if cur >= 0 else None,
                    "suggested_class": int(codes[k]), "suggested_name": schema.classes[k].name,
                    "suggested_share": share, "area_m2": float(inside.sum()) * pixel_area,
                    "status": "queued", "reviewed": 0, "geom": geom,
                })  # fmt: skip
        # What the answers will be compared with: the model's view of the audit pixels.
        round_dir = ws.rounds_dir / f"r{r:03d}"
        _write_round_files(round_dir, ws.regions, audit, labels, lut, pred, conf,
                           sug_pixels, sug_codes, sug_region)  # fmt: skip
        spent = float(regions.cost[selection.ids].sum())
        record = {
            "strategy": strat.name, "budget": budget.describe(), "model": model_id,
            "label_version": version.version, "regions": order, "audit": audit.tolist(),
            "threshold": threshold, "suggestion_pixels": int(sug_pixels.size),
        }  # fmt: skip
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute(
                "INSERT INTO rounds (round, created, label_version, model, strategy, unit, budget, spent, "
                "queued, audit, suggestions, threshold, record) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (r, gpkg.now(), version.version, model_id, strat.name, budget.unit, budget.amount, spent,
                 len(order), int(audit.size), sum(f["kind"] == "suggestion" for f in features), threshold,
                 json.dumps(record)),
            )  # fmt: skip
            audit_set = set(audit.tolist())
            con.executemany(
                "UPDATE regions SET status = 'queued', round = ?, audit = ?, score = ?, updated = ? "
                "WHERE region_id = ? AND status = 'open'",
                [(r, int(rid in audit_set), float(values[rid]) if values is not None and np.isfinite(values[rid]) else None,
                  gpkg.now(), rid) for rid in order],
            )  # fmt: skip
            sid = gpkg.srs_id(con, QUEUE)
            rows = [{**{k: v for k, v in f.items() if k != "geom"}, "geom": gpkg.encode_geometry(f["geom"], sid)}
                    for f in features]  # fmt: skip
            gpkg.insert_rows(con, QUEUE, rows)
            all_scores = [s for (s,) in con.execute(f"SELECT score FROM {QUEUE}")]
            from tiles.qgis import store_gpkg_style

            store_gpkg_style(ws.session, QUEUE, queue_style(schema, all_scores), "trustmap review queue", con)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    project = write_review_project(ws, version.path, all_scores)
    n_sug = sum(f["kind"] == "suggestion" for f in features)
    echo(
        f"round {r}: queued {len(order)} regions ({spent:g} {regions.cost_unit}, {budget.describe()})"
        + (f" and {n_sug} suggestions (model confidence >= {threshold:.2f})" if n_sug else "")
        + f"; open {project} in QGIS"
    )
    return SelectResult(r, len(order), int(audit.size), n_sug, spent, regions.cost_unit, threshold, project)


def ws_meta(con) -> dict[str, Any]:
    return {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM workspace")}


def _write_round_files(
    folder: Path, regions: Regions, audit: np.ndarray, labels: np.ndarray, lut: np.ndarray,
    pred: np.ndarray | None, conf: np.ndarray | None, sug_pixels: np.ndarray, sug_codes: np.ndarray,
    sug_region: np.ndarray,
) -> None:  # fmt: skip
    """``rounds/rNNN/``: the model's prediction on the audit pixels (to calibrate the
    suggestions once answered) and the suggested relabels (applied when accepted)."""
    from tiles.io import atomic_dir

    with atomic_dir(folder) as tmp:
        pix = np.flatnonzero(regions.mask(audit).reshape(-1)) if audit.size else np.zeros(0, np.int64)
        np.savez_compressed(
            tmp / "audit.npz",
            pixels=pix,
            region=regions.labels.reshape(-1)[pix].astype(np.int64),
            before=lut[labels.reshape(-1)[pix]].astype(np.int16),
            pred=pred.reshape(-1)[pix] if pred is not None else np.full(pix.size, -1, np.int16),
            conf=conf.reshape(-1)[pix] if conf is not None else np.zeros(pix.size, np.float32),
        )
        np.savez_compressed(tmp / "suggestions.npz", pixels=sug_pixels, codes=sug_codes, region=sug_region)

