"""Post-hoc calibrators: netcal's fits applied from JSON, repair on real detector output,
class-wise shrinkage, cross-validation, and clear errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from netcal.binning import HistogramBinning, IsotonicRegression
from netcal.scaling import BetaCalibration, LogisticCalibration, TemperatureScaling

from calibration import calibrators as C
from calibration.cli import main
from calibration.detections import Detections, GroundTruth
from calibration.metrics import MetricsConfig
from tiles.errors import TrustmapError


def _toy(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.beta(5, 2, n)
    x = rng.random((n, 4))
    y = (rng.random(n) < s**2 * (0.6 + 0.4 * x[:, 0])).astype(float)
    return s, x, y


NETCAL = {
    "temperature": lambda: TemperatureScaling(tensorboard=False),
    "platt": lambda: LogisticCalibration(tensorboard=False),
    "beta": lambda: BetaCalibration(tensorboard=False),
    "isotonic": IsotonicRegression,
    "histogram": lambda: HistogramBinning(bins=10),
    "box_logistic": lambda: LogisticCalibration(tensorboard=False, detection=True),
}


@pytest.mark.parametrize("method", list(C.METHODS))
def test_json_parameters_reproduce_netcal(method, tmp_path):
    """trustmap stores netcal's fitted numbers and applies them itself, equal to netcal."""
    s, x, y = _toy()
    m = C.METHODS[method]
    params = m.fit(s, x, y)
    inp = np.column_stack([C._clip(s), C._clip(x)]) if m.uses_boxes else s
    with C._quiet():
        ref = NETCAL[method]().fit(inp, y.astype(int)).transform(inp)
    np.testing.assert_allclose(m.apply(params, s, x), ref, atol=1e-6)
    # and through a JSON file (no pickle)
    cal = C.fit_arrays(C.FitData(s, x, y, np.ones(len(s), int), np.arange(len(s)) % 30), method)
    path = cal.save(tmp_path / "c.json")
    again = C.Calibrator.load(path)
    assert json.loads(path.read_text())["format"] == C.FORMAT
    np.testing.assert_array_equal(
        again.calibrate(s, x, np.ones(len(s))), cal.calibrate(s, x, np.ones(len(s)))
    )


def test_fitted_on_the_calibration_split_repairs_the_test_split(sample_run):
    """The sample detector is over-confident; isotonic and Platt fitted on the calibration
    split cut the test split's D-ECE (a split they never saw)."""
    gt_c, gt_t = (GroundTruth.from_coco_json(sample_run[k]) for k in ("cal_gt", "test_gt"))
    dc, dt = Detections.load(sample_run["cal_pred"]), Detections.load(sample_run["test_pred"])
    test = C.fit_data(dt, gt_t)
    mcfg = MetricsConfig(dece_dims=("confidence", "cx", "cy"), dece_bins=(10, 3, 3))
    raw = C._dece_of(test.score, test, mcfg)
    for method in ("isotonic", "platt"):
        cal = C.fit(dc, gt_c, method)
        new = cal.apply(dt, gt_t)
        assert len(new) == len(dt) and np.all((new.score >= 0) & (new.score <= 1))
        after = C._dece_of(C.fit_data(new, gt_t).score, test, mcfg)
        assert after < 0.75 * raw, (method, raw, after)
        # probability vectors follow the calibrated score and still sum to one (softmax head)
        col = np.searchsorted(sorted(gt_t.categories), new.category_id)
        np.testing.assert_allclose(new.probs[np.arange(len(new)), col], new.score)
        np.testing.assert_allclose(new.probs.sum(1), 1.0, atol=1e-6)  # float32 input


def test_classwise_shrinks_small_classes_towards_the_shared_calibrator():
    s, x, y = _toy(2000, seed=3)
    cat = np.where(np.arange(len(s)) < 1970, 1, 2)  # class 2: 30 detections
    y[cat == 2] = (np.random.default_rng(1).random(30) < 0.5).astype(float)
    data = C.FitData(s, x, y, cat, np.arange(len(s)) % 40)
    cal = C.fit_arrays(data, "platt", "classwise", {1: "a", 2: "b"}, shrinkage=50)
    assert cal.per_class[2]["weight"] == pytest.approx(30 / 80)
    assert cal.per_class[1]["weight"] == pytest.approx(1970 / 2020)
    shared = C.fit_arrays(data, "platt")
    rows = cat == 2
    own = C.METHODS["platt"].apply(cal.per_class[2]["params"], s[rows], x[rows])
    both = cal.calibrate(s, x, cat)[rows]
    sh = shared.calibrate(s, x, cat)[rows]
    np.testing.assert_allclose(both, 0.375 * own + 0.625 * sh)


def test_cross_validation_is_out_of_fold():
    s, x, y = _toy(3000, seed=5)
    data = C.FitData(s, x, y, np.ones(len(s), int), np.arange(len(s)) % 50)
    cv = C.cross_validate(data, "isotonic", folds=5)
    assert cv["dece"] < cv["dece_raw"]
    best, res = C.choose(data, ("temperature", "isotonic", "platt"), folds=3)
    assert best == min(res, key=lambda m: res[m]["dece"])


def test_bad_inputs_give_one_line_errors(tmp_path):
    s, x, y = _toy(500)
    data = C.FitData(s, x, y, np.ones(len(s), int), np.arange(len(s)) % 10)
    cal = C.fit_arrays(data, "platt", categories={1: "car"})
    other = Detections([1, 1], [[0, 0, 5, 5], [1, 1, 5, 5]], [7, 1], [0.5, 0.9])
    with pytest.raises(
        TrustmapError, match=r"categories \[7\] that the calibrator was not fitted on"
    ):
        cal.apply(other)
    no_pos = C.FitData(
        s,
        x,
        np.r_[y[:400], np.zeros(100)],
        np.r_[np.ones(400, int), np.full(100, 2)],
        data.image_index,
    )
    with pytest.raises(TrustmapError, match=r"class 2 \('b'\) has 100 detections but no positives"):
        C.fit_arrays(no_pos, "isotonic", "classwise", {1: "a", 2: "b"})
    with pytest.raises(TrustmapError, match="no correct detections"):
        C.fit_arrays(C.FitData(s, x, np.zeros(len(s)), data.category, data.image_index), "platt")
    with pytest.raises(TrustmapError, match="unknown calibrator 'magic'"):
        C.fit_arrays(data, "magic")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TrustmapError, match="bad.json: not a JSON calibrator file"):
        C.Calibrator.load(bad)
    bad.write_text(
        json.dumps(
            {
                "format": C.FORMAT,
                "method": "platt",
                "mode": "shared",
                "categories": {},
                "shared": {"a": 1},
            }
        )
    )
    with pytest.raises(TrustmapError, match=r"key 'shared': platt needs parameters \['a', 'b'\]"):
        C.Calibrator.load(bad)
    box = C.fit_arrays(data, "box_logistic", categories={1: "car"})
    with pytest.raises(TrustmapError, match="uses box position and size: give the annotations"):
        box.apply(other.subset([1]))


def test_fit_and_apply_cli_on_real_predictions(sample_run, tmp_path):
    r = CliRunner()
    cal_json = tmp_path / "calibrator.json"
    res = r.invoke(
        main,
        [
            "fit",
            "--predictions",
            str(sample_run["cal_pred"]),
            "--annotations",
            str(sample_run["cal_gt"]),
            "--cv",
            "3",
            "--out",
            str(cal_json),
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(cal_json.read_text())
    assert set(doc["cv"]) == set(C.METHODS)  # auto: every method cross-validated
    assert doc["method"] == min(doc["cv"], key=lambda m: doc["cv"][m]["dece"])
    out = tmp_path / "calibrated.json"
    res = r.invoke(
        main,
        [
            "apply",
            "--predictions",
            str(sample_run["test_pred"]),
            "--calibrator",
            str(cal_json),
            "--annotations",
            str(sample_run["test_gt"]),
            "--out",
            str(out),
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    before, after = Detections.load(sample_run["test_pred"]), Detections.load(out)
    assert len(after) == len(before) and not np.allclose(after.score, before.score)
    # wrong classes: a calibrator fitted on other categories is refused, naming the file
    doc["categories"] = {"9": "other"}
    doc["per_class"] = {}
    cal_json.write_text(json.dumps(doc))
    res = r.invoke(
        main,
        [
            "apply",
            "--predictions",
            str(sample_run["test_pred"]),
            "--calibrator",
            str(cal_json),
            "--annotations",
            str(sample_run["test_gt"]),
            "--out",
            str(tmp_path / "x.json"),
        ],
    )
    assert (
        res.exit_code == 1 and "not fitted on" in res.stderr and "test_results.json" in res.stderr
    )
