"""The run configuration: ranges, choices, which settings apply to which solver, saved records."""

import json
import os

import pytest

from lrfactor import config as C
from lrfactor import experiment, losses
from lrfactor.config import ConfigError, RunConfig

ROOT = os.path.join(os.path.dirname(__file__), "..")
SOLVERS = C.choices()["solver"]

# A valid value other than the default, per setting (for "given" settings).
OTHER = {
    "solver": "hals", "seeds": 2, "seed": 5, "steps": 7, "rank": 3, "loss": "kl", "l2": 1e-3, "reg": 1e-3, "precision": 32,
    "init": "scaled", "data": "x.npz", "layout": "dense", "row_key": "product", "col_key": "store",
    "value_key": "sales", "split_key": "split", "weight_key": "confidence", "val_fraction": 0.3, "split_seed": 4,
    "predict": "missing",
    "cv": 3, "cv_seed": 2, "inner_val": 0.2,
    "n": 50, "m": 20, "true_rank": 5, "decay": 1.0, "observed": 0.3, "noise": 0.1, "optimizer": "rmsprop",
    "lr": 0.5, "momentum": 0.5, "batch_size": 64, "early_stopping": False, "patience": 5, "min_delta": 0.5,
    "plateau_patience": 5, "plateau_min_delta": 0.5, "plateau_factor": 0.5, "min_lr": 1e-5,
    "damping": "marquardt", "lambda0": 0.5, "linear_solver": "dense_schur", "cg_iters": 5,
    "cg_tol": 0.5, "schur_precision": "full", "refine": 2, "max_step": 1.0, "backtrack": False, "restarts": 1,
    "ftol": 1e-5, "gtol": 1e-5, "xtol": 1e-5, "eps": 1e-6, "mlp_steps": 1, "mlp_dims": "linear",
    "hessian_every": 5, "lanczos_steps": 10, "slq_probes": 2, "chunk": 3, "out": "somewhere", "shard": "seeds",
}


def applies(name):
    """Settings under which ``name`` is used: a solver that reads it and the switches it depends on."""
    uses = C.USES.get(name, ("gauss_newton",))
    kw = {"solver": "sgd" if name == "momentum" else uses[0]}
    if name in C.TABLE:
        kw["data"] = "x.csv"
    if name in ("lanczos_steps", "slq_probes"):
        kw["hessian_every"] = 5
    if name in ("val_fraction", "split_seed"):
        kw["split_key"] = None
    if name in ("n", "m", "true_rank"):
        kw["rank"] = 1
    if name in ("cv", "cv_seed"):
        kw["data"] = "x.csv"
    if name == "cv_seed":
        kw["cv"] = 2
    return kw


def test_other_values_cover_every_field():
    assert set(OTHER) == set(C.FIELDS)


@pytest.mark.parametrize("solver", SOLVERS)
def test_defaults_valid_and_resolved_defaults_valid(solver):
    cfg = RunConfig(solver=solver)
    C.validate(cfg)
    res = C.resolve(cfg)
    C.validate(res)
    assert C.drop_unused(res) == res  # resolve fills only what the solver uses
    assert C.resolve(res) == res


def test_resolve_fills_per_solver_defaults():
    gn = C.resolve(RunConfig())
    assert (gn.seeds, gn.steps, gn.precision, gn.l2, gn.backtrack, gn.lr) == (4, 6000, 64, 0.0, True, None)
    adam = C.resolve(RunConfig(solver="adam"))
    assert (adam.seeds, adam.steps, adam.precision, adam.l2, adam.lr, adam.optimizer) == (10, 10000, 32, 1e-6, 1e-3, "adam")
    assert C.resolve(RunConfig(solver="mlp")).optimizer == "adam"


@pytest.mark.parametrize("name", sorted(n for n in C.FIELDS if n in C.USES))
def test_setting_unused_by_the_solver_is_refused(name):
    uses = C.USES[name]
    for solver in SOLVERS:
        if solver in uses:
            continue
        cfg = RunConfig(solver=solver, **{name: OTHER[name]})
        with pytest.raises(ConfigError, match=f"{C.flag(name)} .* has no effect here: the {solver} solver does not use it"):
            C.validate(cfg)


@pytest.mark.parametrize("name", sorted(n for n in C.FIELDS if n in C.USES or n in C.TABLE or n in C.SYNTHETIC))
def test_setting_where_it_applies_is_accepted(name):
    if name in ("cg_iters", "cg_tol") and "schur_pcg" not in C.choices()["linear_solver"]:
        pytest.skip("no CG linear solver in this build: cg settings apply to nothing")
    kw = applies(name)
    kw[name] = OTHER[name]
    if name == "split_key":
        kw["data"] = "x.csv"
    if name in ("lr",):
        kw["min_lr"] = 1e-5
    C.validate(RunConfig(**kw))


@pytest.mark.parametrize("argv, match", [
    ({"solver": "adam", "momentum": 0.5}, "only the sgd optimizer uses it"),
    ({"solver": "adam", "early_stopping": False, "patience": 3}, "early stopping is off"),
    ({"lanczos_steps": 10}, "Hessian tracing is off"),
    ({"schur_precision": "full", "refine": 2}, "only --schur-precision mixed"),
    ({"linear_solver": "dense_schur", "cg_iters": 5}, "CG"),
    ({"data": "x.npz", "n": 30}, "--data replaces that problem"),
    ({"row_key": "a"}, "long-format tables only"),
    ({"data": "x.npz", "predict": "missing"}, "long-format tables only"),
    ({"data": "x.csv", "split_key": "s", "val_fraction": 0.3}, "--split-key gives the split"),
    ({"solver": "adam", "lr": 1e-5}, "--min-lr 0.0001 is above --lr 1e-05"),
    ({"solver": "sgd", "min_lr": 0.1}, "above the default --lr 0.01"),
    ({"n": 6, "m": 4, "rank": 5}, r"--rank 5 must be between 1 and min\(n, m\) = 4"),
    ({"seed": 2**32 - 2, "seeds": 3}, "below 2\\*\\*32"),
    ({"data": "x.txt"}, "unknown file type"),
    ({"data": "x.csv", "predict": "pairs.txt"}, "--predict pairs.txt"),
])
def test_incompatible_combinations(argv, match):
    with pytest.raises(ConfigError, match=match):
        C.validate(RunConfig(**argv))


# Just outside and on the edge of each range.
EDGES = {
    "seeds": (-1, 0), "seed": (-1, 0), "steps": (0, 1), "rank": (0, 1), "l2": (-1e-9, 0.0), "reg": (-1e-9, 0.0),
    "val_fraction": (1.0, 0.0), "split_seed": (-1, 0), "cv": (-1, 0), "cv_seed": (-1, 0), "inner_val": (1.0, 0.0), "n": (0, 1), "m": (0, 1), "true_rank": (0, 1),
    "decay": (-0.5, 0.0), "observed": (0.0, 0.99), "noise": (-0.1, 0.0), "lr": (0.0, 1e-3),
    "momentum": (1.0, 0.0), "batch_size": (0, 1), "patience": (0, 1), "min_delta": (-0.1, 0.0),
    "plateau_patience": (0, 1), "plateau_min_delta": (0.0, 1e-9), "plateau_factor": (1.0, 0.99),
    "min_lr": (-1e-9, 0.0), "lambda0": (0.0, 1e-12), "cg_iters": (0, 1), "cg_tol": (1.0, 0.99),
    "refine": (-1, 0), "max_step": (-1.0, 0.0), "ftol": (-1.0, 0.0), "gtol": (-1.0, 0.0), "xtol": (-1.0, 0.0),
    "eps": (0.0, 1e-30), "mlp_steps": (-1, 0), "hessian_every": (-1, 0), "lanczos_steps": (1, 2),
    "slq_probes": (0, 1), "chunk": (-1, 0), "precision": (16, 32), "restarts": (C.restarts_max() + 1, C.restarts_max()),
}


def test_every_numeric_setting_has_a_range():
    numeric = set(C.INTS) | set(C.FLOATS)
    assert numeric == set(EDGES)
    assert numeric - {"precision", "restarts"} == set(C.RANGES)


@pytest.mark.parametrize("name", sorted(EDGES))
def test_ranges(name):
    bad, edge = EDGES[name]
    kw = applies(name)
    if name in ("cg_iters", "cg_tol") and "schur_pcg" not in C.choices()["linear_solver"]:
        kw = {}  # the range is checked before whether the setting applies
    with pytest.raises(ConfigError, match=C.flag(name)[2:] if name == "precision" else C.flag(name)):
        C.validate(RunConfig(**kw, **{name: bad}))
    if "cg" in name and not kw:
        return
    C.validate(RunConfig(**kw, **{name: edge}))


@pytest.mark.parametrize("name, value", [("lambda0", float("nan")), ("lr", float("inf")), ("noise", float("nan"))])
def test_non_finite_numbers_refused(name, value):
    with pytest.raises(ConfigError, match="finite"):
        C.validate(RunConfig(**applies(name), **{name: value}))


@pytest.mark.parametrize("name, value", [("rank", 2.5), ("seeds", True), ("lambda0", "1"), ("backtrack", 1),
                                         ("solver", 3)])
def test_wrong_types_refused(name, value):
    # the Python API takes settings as keywords: types are checked, not coerced
    with pytest.raises(ConfigError, match=C.flag(name)):
        C.validate(RunConfig(**{name: value}))


def test_choices_come_from_the_solver_modules(monkeypatch):
    monkeypatch.setattr(losses, "LOSSES", losses.LOSSES + ("hinge",))
    assert "hinge" in C.choices()["loss"]
    C.validate(RunConfig(loss="hinge"))
    monkeypatch.setattr(losses, "LOSSES", ("frobenius",))
    with pytest.raises(ConfigError, match="unknown loss 'kl'; known values: frobenius"):
        C.validate(RunConfig(loss="kl"))


def test_withdrawn_settings_are_gone():
    with pytest.raises(ConfigError, match="unknown damping 'sqrt'"):
        C.validate(RunConfig(damping="sqrt"))
    assert not set(C.FIELDS) & {"geodesic", "newton_iters", "lm_update", "lam_down", "method", "inner"}


def test_optimizer_names_are_optax_aliases():
    C.validate(RunConfig(solver="adam", optimizer="adamw"))
    with pytest.raises(ConfigError, match="not an optax optimizer"):
        C.validate(RunConfig(solver="adam", optimizer="apply_updates"))


# ---------------------------------------------------------------------------
# Paths.

def test_check_out(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="exists and is a file"):
        C.check_out(str(f))
    with pytest.raises(ConfigError, match="is a file, so the folder cannot be created"):
        C.check_out(str(f / "sub" / "run"))
    full = tmp_path / "full"
    full.mkdir()
    (full / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="not empty; use another --out"):  # not a run: nothing to resume
        C.check_out(str(full))
    (full / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=f"not empty; --resume {full} continues it, or another --out"):
        C.check_out(str(full))
    (tmp_path / "empty").mkdir()
    C.check_out(str(tmp_path / "empty"))
    C.check_out(str(tmp_path / "new" / "deeper"))
    assert not (tmp_path / "new").exists()  # checking writes nothing


def test_check_paths_data(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        C.check_paths(RunConfig(data=str(tmp_path / "none.npz")))
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        C.check_paths(RunConfig(data=str(tmp_path / "d.npz")))


# ---------------------------------------------------------------------------
# Saved records.

def _saved(tmp_path, rec, name="run"):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(rec))
    return str(d)


@pytest.mark.parametrize("solver", SOLVERS)
def test_record_round_trip(tmp_path, solver):
    cfg = C.resolve(RunConfig(solver=solver, out="x"))
    rec = experiment.config_record(cfg, "x")
    assert rec["schema"] == C.SCHEMA
    assert experiment.load_config(_saved(tmp_path, json.loads(json.dumps(rec)))) == cfg


def test_old_record_missing_settings_its_solver_uses_is_refused(tmp_path):
    # committed run saved before backtracking, restarts and refinement existed
    rec = json.load(open(os.path.join(ROOT, "results/gn-100-1000/config.json")))
    assert "schema" not in rec and "backtrack" not in rec["config"]
    with pytest.raises(ConfigError, match="saved before refine, backtrack, restarts existed"):
        experiment.load_config(_saved(tmp_path, rec))


def test_old_record_missing_only_settings_its_solver_ignores_loads(tmp_path):
    # the committed Adam run lacks the Gauss-Newton settings added later; they never applied to it
    rec = json.load(open(os.path.join(ROOT, "results/adam-seed/config.json")))
    cfg = experiment.load_config(_saved(tmp_path, rec))
    old = rec["config"]
    for name in ("solver", "seeds", "steps", "lr", "l2", "batch_size", "patience", "min_delta", "plateau_patience",
                 "plateau_min_delta", "min_lr", "precision", "chunk", "n", "m", "observed"):
        assert getattr(cfg, name) == old[name], name
    assert cfg.layout == "dense"  # what every schema-1 run used


def test_old_record_with_every_setting_loads(tmp_path):
    rec = json.load(open(os.path.join(ROOT, "results/gn-100-backtrack/config.json")))
    cfg = experiment.load_config(_saved(tmp_path, rec))
    assert (cfg.backtrack, cfg.restarts, cfg.refine, cfg.linear_solver) == (True, 2, 1, "dense_schur")


@pytest.mark.parametrize("change, match", [
    (lambda r: r["config"].update(geodesic=True), "geodesic=True, which this version no longer has"),
    (lambda r: r["config"].update(method="joint_epi"), "method='joint_epi', which this version no longer has"),
    (lambda r: r.update(schema=C.SCHEMA + 1), "newer lrfactor"),
    (lambda r: r.update(schema=C.SCHEMA), "saved before layout, linear_solver, cg_iters, cg_tol existed"),
    (lambda r: r["config"].update(rank="eight"), "--rank must be an integer"),
    (lambda r: r["config"].update(lambda0=0.0), "--lambda0 must be > 0"),
])
def test_records_that_cannot_be_honoured(tmp_path, change, match):
    rec = json.load(open(os.path.join(ROOT, "results/gn-100-backtrack/config.json")))
    change(rec)
    with pytest.raises(ConfigError, match=match):
        experiment.load_config(_saved(tmp_path, rec))


def test_unreadable_record(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable run config"):
        experiment.load_config(str(d))
