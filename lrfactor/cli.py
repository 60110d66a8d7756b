"""Command line of experiments/run.py: parse, build the config, call the library.

Bad input ends with exit status 2 and one line naming the problem, before any
computing starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from lrfactor.config import RunConfig, resolve

CHOICES = {
    "loss": ("frobenius", "kl"),
    "precision": (32, 64),
    "init": ("keras", "scaled"),
    "method": ("varpro", "joint", "joint_epi"),
    "damping": ("levenberg", "marquardt", "sqrt"),
    "mlp_dims": ("log", "linear"),
    "lm_update": ("nielsen", "fast"),
    "schur_precision": ("full", "mixed"),
}


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise UsageError(message)


def field_help() -> dict:
    """Each RunConfig field's help text: the comment beside its default in config.py."""
    import inspect
    import re

    try:
        src = inspect.getsource(RunConfig)
    except (OSError, TypeError):  # no source shipped: flags without help
        return {}
    return {m.group(1): m.group(2).replace("%", "%%")
            for m in re.finditer(r"^\s+(\w+): [^#\n]*#\s*(.+)$", src, flags=re.M)}


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="run.py", description="Fit V ≈ exp(A) exp(B)ᵀ on a mask, many seeds at once.",
                epilog="Inputs and outputs: shared/CONTRACT.md; defaults reproduce the question.")
    defaults = RunConfig()
    helps = field_help()
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if f.type in ("bool",) or isinstance(default, bool):
            p.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                           help=helps.get(f.name))
            continue
        kind = {int: int, float: float}.get(type(default), str)
        if f.name in ("steps", "precision", "seeds"):
            kind = int
        if f.name in ("l2", "lr"):
            kind = float
        metavar = "|".join(map(str, CHOICES[f.name])) if f.name in CHOICES else None
        if f.name == "solver":
            from lrfactor.solvers import SOLVERS

            metavar = "|".join(sorted(SOLVERS))
        p.add_argument(flag, dest=f.name, type=kind, default=None, metavar=metavar, help=helps.get(f.name))
    p.add_argument("--resume", metavar="DIR", default=None, help="continue the interrupted run saved in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args) -> RunConfig:
    from lrfactor.solvers import SOLVERS

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig) if getattr(args, f.name) is not None}
    cfg = RunConfig(**given)
    if cfg.solver not in SOLVERS:
        raise UsageError(f"unknown solver {cfg.solver!r}; known solvers: {', '.join(sorted(SOLVERS))}")
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) is not None and getattr(cfg, name) not in allowed:
            raise UsageError(f"unknown {name.replace('_', '-')} {getattr(cfg, name)!r}; known: {', '.join(map(str, allowed))}")
    if cfg.seeds < 0 or (cfg.steps is not None and cfg.steps < 1) or cfg.rank < 1:
        raise UsageError("--seeds must be >= 0, --steps >= 1 and --rank >= 1")
    if cfg.hessian_every < 0:
        raise UsageError("--hessian-every must be >= 0")
    from lrfactor.solvers.gauss_newton import RESTART_SCHEDULE

    if not 0 <= cfg.restarts <= len(RESTART_SCHEDULE):
        raise UsageError(f"--restarts must be between 0 and {len(RESTART_SCHEDULE)}, got {cfg.restarts}")
    if not 0 < cfg.observed < 1:
        raise UsageError(f"--observed must lie in (0, 1), got {cfg.observed}")
    if cfg.data and not os.path.exists(cfg.data):
        raise UsageError(f"{cfg.data}: no such file")
    cfg = resolve(cfg)
    from lrfactor.solvers import make_solver

    try:  # solver factories refuse settings they cannot honour (e.g. hals with --loss kl)
        make_solver(cfg, {"n_train_max": cfg.batch_size})
    except ValueError as e:
        raise UsageError(str(e)) from None
    return cfg


def main(argv=None) -> int:
    try:
        args = parser().parse_args(argv)
        if args.resume:
            from lrfactor.experiment import load_config

            if not os.path.exists(os.path.join(args.resume, "config.json")):
                raise UsageError(f"{args.resume}: no run to resume (config.json missing)")
            cfg = load_config(args.resume)
            out = args.resume
            if not os.path.exists(os.path.join(out, "checkpoint.npz")):
                summ = os.path.join(out, "summary.json")
                if os.path.exists(summ) and json.load(open(summ)).get("complete"):
                    print(f"{out}: run already complete", file=sys.stderr)
                    return 0
        else:
            cfg = config_from_args(args)
            from lrfactor.experiment import default_out

            out = cfg.out or default_out(cfg)
            if os.path.exists(out) and os.listdir(out):
                raise UsageError(f"{out}: folder exists and is not empty; use --resume {out} or another --out")
            cfg = dataclasses.replace(cfg, out=out)
        import jax

        jax.config.update("jax_enable_x64", cfg.precision == 64)
        from lrfactor.experiment import execute, prepare
        from lrfactor.problems import ProblemError

        try:
            prep = prepare(cfg)
        except ProblemError as e:
            raise UsageError(str(e)) from None
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = execute(cfg, out, resume=bool(args.resume), progress=not args.quiet, prep=prep)
    report(summary, out)
    return 0


def report(summary: dict, out: str) -> None:
    import numpy as np

    f = summary["final"]
    print(f"{summary['solver']}: {len(summary['seeds'])} seeds, {summary['wall_s']:.1f} s (+{summary['compile_s']:.1f} s compile) -> {out}")
    rel = summary.get("relative", {})

    def ratio(name, k, fmt):  # "—" where the reference is 0 (an exact fit), NaN in memory, null in JSON
        v = rel[name][k]
        return "—" if v is None or not np.isfinite(v) else format(v, fmt)

    for k, s in enumerate(summary["seeds"]):
        line = f"  seed {s:4d}: steps {int(f['steps'][k]):6d}  train {f['train_mse'][k]:.4g}  val {f['val_mse'][k]:.4g}"
        if "truth_val" in rel:
            line += f"  val/theoretical {ratio('truth_val', k, '.3g')}"
        if "oracle_train" in rel:
            line += f"  train/oracle {ratio('oracle_train', k, '.4g')}"
        print(line)
    if "success_rate" in summary:
        print(f"  success (train <= 1.01 x oracle): {summary['success_rate']:.0%}")
