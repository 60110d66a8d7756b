"""The success rule (lrfactor.success): closed forms, and the run's summary applying it."""
import json
import os

import numpy as np

from lrfactor import cli, experiment, success


def test_rule_is_relative_above_the_floor_and_absolute_below_it():
    mean_v2 = np.array([1.0, 1.0, 1.0, 4.0, 1.0, 1.0])
    ref = np.array([1e-4, 1e-4, 1e-32, 1e-32, 0.0, 1e-4])
    final = np.array([1.0099e-4, 1.0101e-4, 1e-20, 4.5e-12, 0.0, np.nan])
    ok, rel, thr = success.judge(final, ref, success.floor(mean_v2))
    np.testing.assert_allclose(thr, 1.01 * ref + 1e-12 * mean_v2, rtol=1e-15)
    np.testing.assert_allclose(thr, success.threshold(ref, mean_v2), rtol=1e-15)
    # within 1 % passes, just over fails; an exact fit's rounding-level reference is met through the floor
    # (scaled with mean V²: 4.5e-12 ≤ 4e-12 + 1.01e-32 is false), a zero reference too; NaN never passes
    assert ok.tolist() == [True, False, True, False, True, False]
    np.testing.assert_allclose(rel[:2], [1.0099, 1.0101])
    np.testing.assert_allclose(rel[2:4], [1e-20 / 1e-12, 4.5e-12 / 4e-12])


def test_exact_fit_succeeds_by_the_floor_in_the_summary(tmp_path, capsys):
    # model rank = true rank, no noise: the oracle's train MSE is rounding (~1e-36), which no blind
    # start matches to 1 %; the summary counts a fit within the floor as a success and says so
    out = str(tmp_path / "run")
    assert cli.main(["--solver", "gauss_newton", "--seeds", "2", "--steps", "300", "--n", "30", "--m", "10",
                     "--true-rank", "2", "--rank", "2", "--out", out, "--quiet"]) == 0
    s = json.load(open(os.path.join(out, "summary.json")))
    prep = experiment.prepare(experiment.load_config(out))
    V, tr = np.asarray(prep.problem.V), np.asarray(prep.problem.train)
    mean_v2 = (V**2 * tr).sum((1, 2)) / tr.sum((1, 2))
    np.testing.assert_allclose(s["reference"]["mean_v2_train"], mean_v2, rtol=1e-12)
    oracle, final = np.asarray(s["reference"]["oracle_train_mse"]), np.asarray(s["final"]["train_mse"])
    np.testing.assert_allclose(s["success_threshold"], 1.01 * oracle + 1e-12 * mean_v2, rtol=1e-12)
    assert s["success"] == (final <= np.asarray(s["success_threshold"])).tolist()
    # at least one seed reached the exact fit: below the floor, yet far above 1.01 × its oracle
    assert any(ok and f > 1.01 * o for ok, f, o in zip(s["success"], final, oracle))
    assert "1e-12 x mean V^2" in capsys.readouterr().out


def test_report_prints_infinite_and_nan_results_without_failing(capsys):
    # summary.json writes inf as "inf" and NaN as null (lrfactor.results); a diverged run reads back so
    summary = {"solver": "sgd", "seeds": [0, 1], "wall_s": 1.0, "compile_s": 1.0,
               "final": {"steps": [5, 5], "train_mse": ["inf", None], "val_mse": ["inf", None]},
               "relative": {"oracle_train": ["inf", None]}, "success_rate": 0.0}
    cli.report(summary, "out")
    lines = [x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("seed")]
    assert "train inf" in lines[0] and "val inf" in lines[0] and "train/oracle inf" in lines[0]
    assert "train nan" in lines[1] and "val —" in lines[1]
