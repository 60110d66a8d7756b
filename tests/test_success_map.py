"""experiments/success_map.py: the success rule, the well-posed flag, skip/resume, and one real tiny map."""

import dataclasses
import importlib.util
import json
import os
import sys

import numpy as np
import pytest

from lrfactor import plots, results

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments", path))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


sm = _load("success_map", "success_map.py")

RECIPE = dict(n=30, m=20, true_rank=12, decay=2.0, observed=0.5, rank=8)


# --------------------------------------------------------------------------- hand-made folders


def _run(folder, solver, seeds, train, val, truth, oracle, oracle_val, *, complete=True, history=None, steps=5):
    os.makedirs(folder, exist_ok=True)
    results.write_json(os.path.join(folder, "config.json"),
                       {"config": {"solver": solver, "seeds": len(seeds), "seed": seeds[0], "steps": steps,
                                   "precision": 64, **RECIPE}})
    results.write_json(os.path.join(folder, "summary.json"), {
        "solver": solver, "seeds": seeds, "complete": complete,
        "final": {"train_mse": train, "val_mse": val, "steps": [steps] * len(seeds)},
        "wall_s": 4.0, "compile_s": 2.0,
        "reference": {"truth_train_mse": truth, "truth_val_mse": truth, "oracle_train_mse": oracle,
                      "oracle_val_mse": oracle_val},
    })
    if history is not None:
        results.write_npz(os.path.join(folder, "history.npz"), **history)


def _data(cell_dir, seeds, mean_v2, per_row, per_col, truth, rank=8):
    results.write_json(os.path.join(cell_dir, "data.json"), {
        "recipe": {**RECIPE, "rank": rank}, "precision": 64, "seeds": seeds, "mean_v2_train": mean_v2,
        "train_per_row": per_row, "train_per_col": per_col, "min_train_per_row": [1] * len(seeds),
        "min_train_per_col": [1] * len(seeds), "truth_train_mse": truth})


def _plan(root, cells, solvers=("gauss_newton", "hals", "adam")):
    results.write_json(os.path.join(root, "plan.json"), {
        "command": ["experiments/success_map.py", "run"], "recipe": RECIPE, "recipe_cell": cells[0], "solvers": list(solvers), "cells": cells,
        "axes": [{"axis": "observed", "value": 0.5 + 0.1 * i, "label": f"{0.5 + 0.1 * i:g}", "cell": c}
                 for i, c in enumerate(cells)],
        "seeds": {}, "seed": 0, "steps": {}})


TRUTH = [3.0, 0.0, 4.0]  # the truncated truth's train MSE per seed (0: it fits exactly)
ORACLE = [1.0, 1e-30, 2.0]


@pytest.fixture()
def hand_map(tmp_path):
    """One cell, three seeds: a rank-deficient seed (0), an exact-fit seed (1), a seed where HALS diverged (2)."""
    root = str(tmp_path)
    cell = os.path.join(root, "runs", "c0")
    _data(cell, [0, 1, 2], mean_v2=[100.0] * 3, per_row=[15, 17, 16], per_col=[40, 40, 40], truth=TRUTH)
    # Gauss-Newton: best point so far per step, restarts counted after each step.
    tr = np.array([[5, 5, 0.98, 0.98, 0.98, 0.98],  # first under the threshold at index 2: made in step 2 by
                   [5, 5, 5, 5, 1e-20, 1e-20],      # the first run (the restart count rises at that same step);
                   [5, 5, 4, 3, 2.5, 2.5]])         # seed 1 at index 4 by restart 1; seed 2 never
    rs = np.array([[0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 2, 2], [0, 1, 1, 2, 2, 2]])
    hist = {"train_mse": tr, "restart": rs, "wall_s": np.tile(np.arange(6.0), (3, 1))}
    _run(os.path.join(cell, "gauss_newton"), "gauss_newton", [0, 1, 2], [0.98, 1e-20, 2.5], [1.1, 1e-19, 3.0],
         TRUTH, ORACLE, [1.0, 1e-30, 2.0], history=hist)
    _run(os.path.join(cell, "hals"), "hals", [0, 1, 2], [0.9890, 5e-11, None], [1.2, 1e-10, None],
         TRUTH, ORACLE, [1.0, 1e-30, 2.0])
    _run(os.path.join(cell, "adam"), "adam", [0, 1], [0.995, 3e-10], [1.5, 1e-9], TRUTH[:2], ORACLE[:2], [1.0, 1e-30])
    _plan(root, ["c0"])
    return root


def test_best_known_success_and_floor(hand_map, monkeypatch):
    c = sm.aggregate(hand_map)["cells"]["c0"]
    # best known = min(oracle, every solver's final) per seed; HALS' NaN is no candidate.
    assert c["best_train_mse"] == {"0": 0.98, "1": 1e-30, "2": 2.0}
    assert c["floor"] == {"0": pytest.approx(1e-10), "1": pytest.approx(1e-10), "2": pytest.approx(1e-10)}
    s = c["solvers"]
    # Seed 0: 1.01 × 0.98 = 0.9898, so HALS at 0.989 succeeds and Adam at 0.995 fails although it is within
    # 1 % of the oracle. Seed 1 (exact fit): the floor 1e-12 × 100 admits 5e-11, not 3e-10.
    assert s["gauss_newton"]["success"] == [True, True, False]
    assert s["hals"]["success"] == [True, True, False]
    assert s["adam"]["success"] == [False, False]
    assert (s["gauss_newton"]["n_success"], s["gauss_newton"]["n_seeds"], s["adam"]["rate"]) == (2, 3, 0.0)
    # final / max(best, floor): 1, 1e-20 / 1e-10, 2.5 / 2.
    assert s["gauss_newton"]["median_final_over_best"] == pytest.approx(1.0)
    assert s["adam"]["median_final_over_best"] == pytest.approx(np.median([0.995 / 0.98, 3e-10 / 1e-10]))
    assert s["gauss_newton"]["median_val_over_oracle_val"] == pytest.approx(1.1)  # 1.1, 1e-19/1e-10, 1.5
    assert s["gauss_newton"]["success_by_run"] == {"first": 1, "restart_1": 1}
    assert s["gauss_newton"]["wall_per_seed_s"] == pytest.approx(2.0)  # (4 + 2) s over 3 seeds
    assert s["gauss_newton"]["median_seed_stop_s"] == pytest.approx(5 / 3)  # stopped at step 5, wall 5 s
    # Without the floor the exact-fit seed would ask HALS for 1.01 × 1e-30.
    monkeypatch.setattr(sm, "FLOOR_REL", 0.0)
    assert sm.aggregate(hand_map)["cells"]["c0"]["solvers"]["hals"]["success"] == [True, False, False]


def test_other_runs_are_scored_against_the_maps_best_known(hand_map, capsys):
    sm.write_map(hand_map)
    other = os.path.join(hand_map, "variant")
    # seed 0 at 0.989 (≤ 1.01 × 0.98), seed 1 at 1e-9 (above the floor 1e-10), seed 2 below everything known
    _run(other, "gauss_newton", [0, 1, 2], [0.989, 1e-9, 1.5], [1.0] * 3, TRUTH, ORACLE, [1.0] * 3, steps=7)
    table = sm.score_runs(hand_map, [other])
    assert "| c0 | 7 |" in table and "| 2/3 |" in table
    # median of final / max(best, floor): 0.989 / 0.98, 1e-9 / 1e-10, 1.5 / 1.5 (its own final is the best)
    assert f"| {sm._g(float(np.median([0.989 / 0.98, 10.0, 1.0])))} |" in table
    assert sm.main(["score", "--root", hand_map, other]) == 0 and "2/3" in capsys.readouterr().out
    results.write_json(os.path.join(other, "config.json"),
                       {"config": {"solver": "gauss_newton", "seeds": 3, "seed": 0, "steps": 7, **RECIPE,
                                   "observed": 0.123}})
    assert sm.main(["score", "--root", hand_map, other]) == 2
    assert "no cell" in capsys.readouterr().err


def test_well_posed_flag(hand_map):
    c = sm.aggregate(hand_map)["cells"]["c0"]
    assert (c["train_per_row"], c["train_per_col"], c["two_r"]) == (16.0, 40.0, 16)
    assert c["well_posed"]  # 16 per row on average: exactly 2·r
    data = os.path.join(hand_map, "runs", "c0", "data.json")
    d = results.read_json(data)
    d["train_per_row"] = [15, 17, 15.9]
    results.write_json(data, d)
    assert not sm.aggregate(hand_map)["cells"]["c0"]["well_posed"]
    d["train_per_row"], d["train_per_col"] = [40] * 3, [16, 15, 16]
    results.write_json(data, d)
    assert not sm.aggregate(hand_map)["cells"]["c0"]["well_posed"]


def test_incomplete_runs_do_not_count_and_other_data_is_refused(hand_map):
    summ = os.path.join(hand_map, "runs", "c0", "hals", "summary.json")
    s = results.read_json(summ)
    s["complete"] = False
    s["final"]["train_mse"] = [1e-3, 1e-40, 1e-3]  # would lower the best known, were the run finished
    results.write_json(summ, s)
    c = sm.aggregate(hand_map)["cells"]["c0"]
    assert c["solvers"]["hals"]["state"] == "partial"
    assert c["best_train_mse"] == {"0": 0.98, "1": 1e-30, "2": 2.0}
    s["complete"] = True
    s["reference"]["truth_train_mse"] = [3.0, 0.0, 4.0001]  # a seed drawn from other data
    results.write_json(summ, s)
    with pytest.raises(sm.MapError, match="seed 2 ran on other data"):
        sm.aggregate(hand_map)
    assert sm.main(["aggregate", "--root", hand_map]) == 2


def test_markdown_and_figure_from_map_json(hand_map, capsys):
    sm.write_map(hand_map)
    md = open(os.path.join(hand_map, "map.md")).read()
    assert "| observed | 0.5 | 16 / 40 | 16 | ✓ | 2/3 | 2/3 | 0/2 | first: 1, restart 1: 1 |" in md
    m = json.load(open(os.path.join(hand_map, "map.json")))
    m["axes"].append({"axis": "observed", "value": 0.1, "label": "0.1", "cell": "c1"})
    m["cells"]["c1"] = {"ran": False, "well_posed": False, "solvers": {s: {"state": "absent"} for s in m["solvers"]}}
    fig = plots.success_map_figure(m)
    ax = fig.axes[0]
    texts = [[t.get_text() for t in ax.texts]]
    assert texts == [["2/3", "2/3", "0/2", "not run", "not run", "not run"]]
    img = ax.images[0].get_array()
    assert np.allclose(img[0], [2 / 3, 2 / 3, 0]) and np.ma.getmaskarray(img)[1].all()
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 1 and hatched[0].get_y() == pytest.approx(0.5)  # the second row only
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["observed 0.5 (recipe)", "observed 0.1 ✗"]
    plot = _load("plot_cli", "plot.py")  # a map folder and a run folder together: refused, nothing drawn
    os.unlink(os.path.join(hand_map, "success_map.png"))
    capsys.readouterr()
    assert plot.main([hand_map, os.path.join(hand_map, "runs", "c0", "hals")]) == 2
    assert capsys.readouterr().err.startswith("error: give either success-map folders or run folders")
    assert not os.path.exists(os.path.join(hand_map, "success_map.png"))


def _second_map(root):
    """A later sitting on the same cell: Gauss-Newton again on seeds 1–3 (seed 3 new), HALS not run."""
    cell = os.path.join(root, "runs", "c0")
    _data(cell, [1, 2, 3], mean_v2=[100.0] * 3, per_row=[17, 16, 30], per_col=[40, 40, 40], truth=TRUTH[1:] + [5.0])
    # seed 1 now at 1e-9 (the first map's 1e-20 stays its best-known), seed 2 below everything known, seed 3 new
    _run(os.path.join(cell, "gauss_newton"), "gauss_newton", [1, 2, 3], [1e-9, 1.5, 0.7], [1.0, 1.4, 0.8],
         TRUTH[1:] + [5.0], ORACLE[1:] + [0.7], [1e-30, 2.0, 0.5], steps=9)
    _plan(root, ["c0"], solvers=("gauss_newton",))


def test_maps_combine_seed_by_seed_later_maps_first(hand_map, tmp_path, capsys):
    later, out = str(tmp_path / "later"), str(tmp_path / "combined")
    _second_map(later)
    m = sm.combine([hand_map, later], out)
    c = m["cells"]["c0"]
    # best-known: the lowest over both maps, the replaced runs included
    assert c["best_train_mse"] == {"0": 0.98, "1": 1e-30, "2": 1.5, "3": 0.7}
    gn = c["solvers"]["gauss_newton"]
    assert gn["seeds"] == [0, 1, 2, 3] and gn["final_train_mse"] == [0.98, 1e-9, 1.5, 0.7]
    # seed 1 at 1e-9 is above 1.01·1e-30 + floor 1e-10: the later run fails where the earlier succeeded
    assert gn["success"] == [True, False, True, True] and (gn["n_success"], gn["n_seeds"]) == (3, 4)
    assert gn["sources"] == [{"root": sm._from_root(hand_map), "seeds": [0], "steps_budget": 5},
                             {"root": sm._from_root(later), "seeds": [1, 2, 3], "steps_budget": 9}]
    # HALS ran in the first map only: seed 0 within 1 % of 0.98, seed 1 under the floor, seed 2 diverged
    assert c["solvers"]["hals"]["success"] == [True, True, False] and c["solvers"]["hals"]["seeds"] == [0, 1, 2]
    # held-out over the oracle's: seed 3's oracle held-out comes from the later map
    assert gn["median_val_over_oracle_val"] == pytest.approx(np.median([1.1, 1.0 / 1e-10, 1.4 / 2.0, 0.8 / 0.5]))
    assert c["train_per_row"] == pytest.approx(np.mean([15, 17, 16, 30])) and c["seeds"] == [0, 1, 2, 3]
    assert sm.main(["combine", "--out", out, hand_map, later]) == 0
    md = open(os.path.join(out, "map.md")).read()
    assert "| observed | 0.5 | 20 / 40 | 16 | ✓ | 3/4 | 2/3 | 0/2 |\n" in md
    assert f"{sm._from_root(hand_map)} seeds 0 (budget 5); {sm._from_root(later)} seeds 1–3 (budget 9)" in md
    assert os.path.exists(os.path.join(out, "success_map.png"))
    assert sm._ranges([0, 1, 2, 5, 7, 8]) == "0–2, 5, 7–8"


def test_combining_maps_of_other_data_is_refused(hand_map, tmp_path, capsys):
    later, out = str(tmp_path / "later"), str(tmp_path / "combined")
    _second_map(later)
    for name, key in (("data.json", None), (os.path.join("gauss_newton", "summary.json"), "reference")):
        path = os.path.join(later, "runs", "c0", name)  # seed 2 drawn from other data than in the first map,
        d = results.read_json(path)                     # consistently within the later map
        (d[key] if key else d)["truth_train_mse"][1] = 4.5
        results.write_json(path, d)
    capsys.readouterr()
    assert sm.main(["combine", "--out", out, hand_map, later]) == 2
    err = capsys.readouterr().err
    assert "seed 2 drew other data" in err and err.count("\n") == 1 and not os.path.exists(out)
    assert sm.main(["combine", "--out", hand_map, hand_map, later]) == 2
    assert "one of the maps combined" in capsys.readouterr().err


# --------------------------------------------------------------------------- skip, resume, redo


class FakeLauncher:
    """Stands in for run.py: writes a complete run whose data references match data.json."""

    def __init__(self):
        self.commands = []

    def __call__(self, cmd, log_path, deadline):
        self.commands.append(cmd)
        args = cmd[2:]
        out = args[args.index("--resume" if "--resume" in args else "--out") + 1]
        out = out if os.path.isabs(out) else os.path.join(ROOT, out)
        cell_dir = os.path.dirname(out)
        if "--resume" in args:
            cfg = results.read_json(os.path.join(out, "config.json"))["config"]
            os.unlink(os.path.join(out, "checkpoint.npz"))
        else:
            assert not os.path.exists(out) or not os.listdir(out)  # a partial folder was cleared first
            flags = [a for a in args[: args.index("--out")]]
            cfg = dataclasses.asdict(sm.resolved_config(flags))
        data = results.read_json(os.path.join(cell_dir, "data.json"))
        seeds = list(range(cfg["seed"], cfg["seed"] + cfg["seeds"]))
        truth = [data["truth_train_mse"][data["seeds"].index(x)] for x in seeds]
        os.makedirs(out, exist_ok=True)
        results.write_json(os.path.join(out, "config.json"), {"config": cfg})
        results.write_json(os.path.join(out, "summary.json"), {
            "solver": cfg["solver"], "seeds": seeds, "complete": True,
            "final": {"train_mse": [1.0] * len(seeds), "val_mse": [1.0] * len(seeds), "steps": [3] * len(seeds)},
            "wall_s": 1.0, "compile_s": 1.0,
            "reference": {"truth_train_mse": truth, "truth_val_mse": truth, "oracle_train_mse": [1.0] * len(seeds),
                          "oracle_val_mse": [1.0] * len(seeds)}})
        return {"command": cmd, "returncode": 0, "process_s": 0.5, "load_before": [], "load_after": [],
                "stopped": None, "started": "now"}


def test_complete_runs_are_skipped_interrupted_ones_resumed_or_redone(tmp_path, capsys):
    root = str(tmp_path / "map")
    base = ["run", "--root", root, "--n", "30", "--m", "20", "--steps", "3", "--seeds", "2",
            "--solvers", "gauss_newton,hals", "--axes", "observed=0.5,0.9"]
    fake = FakeLauncher()
    assert sm.main(base, launcher=fake) == 0
    assert len(fake.commands) == 4  # 2 cells × 2 solvers
    assert all("--precision" in c and c[c.index("--precision") + 1] == "64" for c in fake.commands)
    fake.commands.clear()
    assert sm.main(base, launcher=fake) == 0
    assert fake.commands == []  # everything complete: nothing runs again
    a = os.path.join(root, "runs", "n30-m20-k12-d2-o0.5-r8")
    b = os.path.join(root, "runs", "n30-m20-k12-d2-o0.9-r8")
    # An interrupted run with a checkpoint is resumed; one without is removed and redone.
    s = results.read_json(os.path.join(a, "hals", "summary.json"))
    results.write_json(os.path.join(a, "hals", "summary.json"), {**s, "complete": False})
    results.write_npz(os.path.join(a, "hals", "checkpoint.npz"), x=np.zeros(1))
    os.unlink(os.path.join(b, "gauss_newton", "summary.json"))
    assert sm.main(base, launcher=fake) == 0
    assert len(fake.commands) == 2
    assert "--resume" in fake.commands[0] and fake.commands[0][fake.commands[0].index("--resume") + 1].endswith(
        os.path.join("n30-m20-k12-d2-o0.5-r8", "hals"))
    assert "--out" in fake.commands[1] and "--solver" in fake.commands[1]
    attempts = results.read_json(os.path.join(a, "hals.process.json"))
    assert len(attempts) == 2 and "--resume" in attempts[1]["command"]
    m = results.read_json(os.path.join(root, "map.json"))
    assert m["cells_ran"] == m["cells_complete"] == ["n30-m20-k12-d2-o0.5-r8", "n30-m20-k12-d2-o0.9-r8"]
    assert m["cells"]["n30-m20-k12-d2-o0.5-r8"]["solvers"]["hals"]["process_s"] == pytest.approx(1.0)
    # A saved run made with other settings is refused before anything runs or is written.
    fake.commands.clear()
    plan_before = open(os.path.join(root, "plan.json")).read()
    capsys.readouterr()
    assert sm.main(base[:-4] + ["--steps", "4"] + base[-4:], launcher=fake) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "steps=3 (the map asks 4)" in err and err.count("\n") == 1
    assert fake.commands == [] and open(os.path.join(root, "plan.json")).read() == plan_before


def test_run_flags_reach_every_run_and_saved_runs_must_match_them(tmp_path, capsys):
    root = str(tmp_path / "map")
    base = ["run", "--root", root, "--n", "30", "--m", "20", "--steps", "3", "--seeds", "2",
            "--solvers", "gauss_newton", "--axes", "observed=0.5,0.9"]
    fake = FakeLauncher()
    assert sm.main(base + ["--run-flags", "--max-step 0.5"], launcher=fake) == 0
    assert len(fake.commands) == 2
    assert all(c[-5:-3] == ["--max-step", "0.5"] and c[-3] == "--out" for c in fake.commands)
    assert results.read_json(os.path.join(root, "plan.json"))["run_flags"] == ["--max-step", "0.5"]
    assert "--run-flags '--max-step 0.5'" in open(os.path.join(root, "map.md")).read()  # a command to paste
    run = os.path.join(root, "runs", "n30-m20-k12-d2-o0.5-r8", "gauss_newton")
    assert results.read_json(os.path.join(run, "config.json"))["config"]["max_step"] == 0.5
    # The same map without the flags would count those runs as its own: refused, nothing runs.
    fake.commands.clear()
    capsys.readouterr()
    assert sm.main(base + ["--run-flags", "--max-step 0.25"], launcher=fake) == 2
    err = capsys.readouterr().err
    assert "max_step=0.5 (the map asks 0.25)" in err and err.count("\n") == 1 and fake.commands == []
    assert set(sm.extra_fields(["--no-backtrack", "--lambda0=0.1", "--max-step", "0.5"])) == {
        "backtrack", "lambda0", "max_step"}
    # Flags run.py refuses are refused before anything runs.
    assert sm.main(base + ["--root", str(tmp_path / "other"), "--run-flags", "--max-step -1"], launcher=fake) == 2
    assert "--max-step" in capsys.readouterr().err and not os.path.exists(str(tmp_path / "other"))


def test_a_stopped_run_is_recorded_and_the_map_still_written(tmp_path):
    root = str(tmp_path / "map")

    def stopping(cmd, log_path, deadline):
        raise sm.Stop({"command": cmd, "returncode": -15, "process_s": 2.0, "stopped": "deadline"})

    assert sm.main(["run", "--root", root, "--n", "30", "--m", "20", "--steps", "3", "--seeds", "2",
                    "--solvers", "hals", "--axes", "observed=0.5"], launcher=stopping) == 0
    cell = os.path.join(root, "runs", "n30-m20-k12-d2-o0.5-r8")
    assert results.read_json(os.path.join(cell, "hals.process.json"))[0]["stopped"] == "deadline"
    m = results.read_json(os.path.join(root, "map.json"))
    assert m["cells_not_ran"] == ["n30-m20-k12-d2-o0.5-r8"] and m["cells_complete"] == []
    assert os.path.exists(os.path.join(root, "success_map.png"))


@pytest.mark.parametrize("argv, msg", [
    (["run", "--axes", "noise"], "unknown axis"),
    (["run", "--axes", "shape=10by10"], "is not NxM"),
    (["run", "--seeds", "8,bogus=2"], "not among the map's solvers"),
    (["run", "--steps", "0"], "must be at least 1"),
    (["run", "--solvers", "gauss_newton,gauss_newton"], "distinct"),
    (["run", "--axes", "rank=40", "--n", "30", "--m", "20"], "must be between 1 and min(n, m) = 20"),
    (["plot"], "no such file"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, argv, msg):
    root = str(tmp_path / "map")
    argv = argv[:1] + ["--root", root] + argv[1:]
    assert sm.main(argv, launcher=FakeLauncher()) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and err.count("\n") == 1
    assert not os.path.exists(root)


def test_per_solver_values():
    solvers = ("gauss_newton", "hals", "adam")
    assert sm.parse_per_solver("8,adam=4", solvers, "seeds") == {"gauss_newton": 8, "hals": 8, "adam": 4}
    assert sm.parse_per_solver("adam=4,8", solvers, "seeds") == {"gauss_newton": 8, "hals": 8, "adam": 4}
    assert sm.parse_per_solver("adam=2000", solvers, "steps") == {"gauss_newton": None, "hals": None, "adam": 2000}
    assert sm.parse_per_solver("adam=2000", ("hals",), "steps", strict=False) == {"hals": None}
    entries, cells = sm.plan_cells(sm.base_recipe(), sm.parse_axes(["observed", "rank=8,16", "shape=400x400"]))
    names = [c.name() for c in cells]
    assert names[0] == "n1000-m100-k12-d2-o0.5-r8" and len(names) == len(set(names)) == 7
    assert [e["cell"] for e in entries if e["axis"] == "rank"] == ["n1000-m100-k12-d2-o0.5-r8",
                                                                   "n1000-m100-k12-d2-o0.5-r16"]


# --------------------------------------------------------------------------- one real tiny cell


def test_tiny_map_end_to_end(tmp_path):
    """Real run.py processes on one 30 × 20 cell, then the map and its figure from the saved files.

    Gauss-Newton (a float64 solver by default) and Adam (float32 by default): the map's --precision 64 must
    give both the same matrix."""
    root = str(tmp_path / "map")
    argv = ["run", "--root", root, "--n", "30", "--m", "20", "--steps", "3", "--seeds", "2", "--axes", "observed=0.5",
            "--solvers", "gauss_newton,adam"]
    assert sm.main(argv) == 0
    m = results.read_json(os.path.join(root, "map.json"))
    cell = "n30-m20-k12-d2-o0.5-r8"
    c = m["cells"][cell]
    assert m["cells_ran"] == [cell] and set(c["solvers"]) == {"gauss_newton", "adam"}
    runs = {s: results.load_run(os.path.join(root, "runs", cell, s)) for s in c["solvers"]}
    # The same seed drew the same matrix for every solver (all at precision 64) ...
    truths = [r["summary"]["reference"]["truth_train_mse"] for r in runs.values()]
    assert all(np.allclose(t, truths[0], rtol=1e-12) for t in truths)
    assert all(r["config"]["config"]["precision"] == 64 and r["summary"]["complete"] for r in runs.values())
    # ... and the map's best-known and success flags are those of the saved finals.
    finals = np.array([r["summary"]["final"]["train_mse"] for r in runs.values()])
    best = np.minimum(finals.min(axis=0), runs["gauss_newton"]["summary"]["reference"]["oracle_train_mse"])
    assert np.allclose([c["best_train_mse"][str(x)] for x in (0, 1)], best, rtol=1e-15)
    data = results.read_json(os.path.join(root, "runs", cell, "data.json"))
    for s, r in runs.items():
        thr = 1.01 * best + 1e-12 * np.asarray(data["mean_v2_train"])
        assert c["solvers"][s]["success"] == list(np.asarray(r["summary"]["final"]["train_mse"]) <= thr)
        assert c["solvers"][s]["commands"][0][-1] == "--quiet"
    assert c["train_per_row"] == pytest.approx(np.mean(data["train_per_row"]))
    assert 0.3 * 20 < c["train_per_row"] < 0.7 * 20 and not c["well_posed"]  # ~10 per row < 2·8
    assert m["environment"]["x64"] and m["plan"]["precision"] == 64
    assert os.path.getsize(os.path.join(root, "success_map.png")) > 0
    os.unlink(os.path.join(root, "success_map.png"))
    plot = _load("plot_cli", "plot.py")
    assert plot.main([root]) == 0 and os.path.exists(os.path.join(root, "success_map.png"))
    # A second sitting finds everything complete and starts no process.
    started = []
    assert sm.main(argv, launcher=lambda *a: started.append(a)) == 0 and started == []
