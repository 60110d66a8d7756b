"""Command line of experiments/run.py: parse, build the config, call the library.

Every field of :class:`lrfactor.config.RunConfig` is a flag. Bad input ends
with exit status 2 and one line ``error: ...`` on stderr, before any computing
starts and before anything is written.

``--coordinator HOST:PORT --num-processes N --process-id I`` runs one of N
processes of a run sharded over the devices of all of them
(lrfactor/distributed.py): start the same command once per process (one per
host of a cluster), each with its own ``--process-id``. Process 0 writes the
output folder and prints; the others print nothing unless an error stops them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys

from lrfactor import config as C
from lrfactor import success
from lrfactor.config import ConfigError, RunConfig


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """The ArgumentParser of every lrfactor script: a usage error raises
    :class:`UsageError` (the script prints one line and returns 2) instead of
    argparse's usage dump and exit."""

    def error(self, message):
        raise UsageError(message)


def one_line_errors(main):
    """Wrap a script's ``main(argv) -> int``: a :class:`UsageError` raised in it
    (by :class:`Parser` or by the script) prints ``error: ...`` and returns 2."""

    @functools.wraps(main)
    def wrapped(argv=None) -> int:
        try:
            return main(argv)
        except UsageError as e:
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2

    return wrapped


def field_help() -> dict:
    """Each RunConfig field's help text: the comment beside its default in config.py."""
    import inspect
    import re

    try:
        src = inspect.getsource(RunConfig)
    except (OSError, TypeError):  # no source shipped: flags without help
        return {}
    found = {m.group(1): m.group(2).replace("%", "%%")
             for m in re.finditer(r"^\s+(\w+): [^#\n]*#\s*(.+)$", src, flags=re.M)}
    return {k: v for k, v in found.items() if k in C.FIELDS}


def _listed(kind, name):
    """An argparse type: a comma-separated list of ``kind`` values, as a tuple."""

    def parse(text: str) -> tuple:
        return tuple(kind(x.strip()) for x in text.split(","))

    parse.__name__ = kind.__name__  # argparse names it in errors: "invalid int value: '2,x'"
    return parse


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="run.py", allow_abbrev=False,
               description="Fit V ≈ exp(A) exp(B)ᵀ on a mask, many seeds at once.",
               epilog="Inputs, outputs and which settings apply to which solver: docs/contract.md. "
                      "The defaults reproduce the question's problem and Keras setup.")
    helps = field_help()
    known = C.choices()
    for name, uses in C.USES.items():  # say which solvers read a setting
        if name in helps and len(uses) < len(known["solver"]):
            helps[name] += f" [{', '.join(uses)}]"
    for name in C.FIELDS:
        if name in C.BOOLS:
            p.add_argument(C.flag(name), dest=name, default=None, action=argparse.BooleanOptionalAction,
                           help=helps.get(name))
            continue
        kind = int if name in C.INTS else float if name in C.FLOATS else str
        metavar = "|".join(map(str, known[name])) if name in known else None
        if name in C.CV_GRID:  # a comma list of values (cross-validation chooses among them)
            kind = _listed(kind, name)
            metavar = f"{metavar or name.upper()}[,...]"
        p.add_argument(C.flag(name), dest=name, type=kind, default=None, metavar=metavar, help=helps.get(name))
    p.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the interrupted run saved in DIR with its saved settings (no other flag but --quiet "
                        "and the process flags)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("several processes", "one run over the devices of several processes (one per host); "
                                                   "give all three or none")
    g.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                   help="address of process 0, reachable from every process")
    g.add_argument("--num-processes", metavar="N", type=int, default=None, help="number of processes")
    g.add_argument("--process-id", metavar="I", type=int, default=None, help="this process, 0 ... N-1")
    return p


def config_from_args(args) -> RunConfig:
    """The validated, resolved config of the parsed flags, with its output folder. Raises ConfigError."""
    given = {name: getattr(args, name) for name in C.FIELDS if getattr(args, name) is not None}
    cfg = C.resolve(C.validate(RunConfig(**C.grid_settings(given))))
    if cfg.out is None:
        from lrfactor.experiment import default_out

        cfg = dataclasses.replace(cfg, out=default_out(cfg))
    from lrfactor.distributed import is_main

    C.check_paths(cfg if is_main() else dataclasses.replace(cfg, out=None))  # only process 0 writes
    from lrfactor.solvers import make_solver

    try:  # solver factories refuse settings they cannot honour; nothing is computed here
        lists = C.grid_lists(cfg)
        for name, vals in lists.items() or [(None, ())]:
            for v in vals or (None,):
                one = {a: vs[0] for a, vs in lists.items()}
                if name is not None:
                    one[name] = v
                make_solver(dataclasses.replace(cfg, **one), {"n_train_max": cfg.batch_size})
    except ValueError as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    return cfg


def resume_config(args):
    """(config, folder) of the run to resume, or (None, folder) when it is already complete."""
    extra = [C.flag(name) for name in C.FIELDS if getattr(args, name) is not None]
    if extra:
        raise UsageError(f"--resume continues a run with its saved settings; remove {', '.join(extra)} "
                         f"(only --quiet and the process flags may go with it)")
    out = args.resume
    if not os.path.isdir(out):
        raise UsageError(f"{out}: no such folder to resume")
    if not os.path.exists(os.path.join(out, "config.json")):
        raise UsageError(f"{out}: no run to resume (config.json missing)")
    if not os.path.exists(os.path.join(out, "checkpoint.npz")):
        summ = os.path.join(out, "summary.json")
        try:
            complete = os.path.exists(summ) and json.load(open(summ)).get("complete")
        except (OSError, ValueError, AttributeError):
            complete = False
        if complete:
            return None, out
    from lrfactor.experiment import load_config

    cfg = load_config(out)
    C.check_paths(cfg, resume=True)
    return cfg, out


def main(argv=None) -> int:
    try:
        args = parser().parse_args(argv)
        from lrfactor import distributed

        try:
            distributed.check_processes(args.coordinator, args.num_processes, args.process_id)
        except ValueError as e:
            raise UsageError(str(e)) from None
    except UsageError as e:
        return _fail(e)
    if args.coordinator is not None:  # before anything else touches JAX
        distributed.init_processes(args.coordinator, args.num_processes, args.process_id)
    try:
        if args.resume is not None:
            cfg, out = resume_config(args)
            if cfg is None:
                print(f"{out}: run already complete", file=sys.stderr)
                return 0
        else:
            cfg = config_from_args(args)
            out = cfg.out
        import jax

        jax.config.update("jax_enable_x64", cfg.precision == 64)
        from lrfactor import cv
        from lrfactor.experiment import execute, prepare
        from lrfactor.problems import ProblemError

        try:
            prep = cv.prepare(cfg) if cfg.cv else prepare(cfg)
        except ProblemError as e:
            raise UsageError(str(e)) from None
        if distributed.is_main():
            try:  # the first thing written; check_paths vetted the path, the disk has the last word
                os.makedirs(out, exist_ok=True)
            except OSError as e:
                raise UsageError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    except (UsageError, ConfigError) as e:
        distributed.all_ok(False)
        return _fail(e)
    if not distributed.all_ok(True):  # another process refused its input (and said why)
        return 2
    if cfg.cv:
        try:
            outcome, rec = cv.execute(prep, out, progress=not args.quiet)
        except cv.CVError as e:
            print(f"error: cross-validation: {e}", file=sys.stderr)
            return 1
        if distributed.is_main():
            report_cv(rec)
        summary = outcome.summary
    else:
        try:
            summary = execute(cfg, out, resume=args.resume is not None, progress=not args.quiet, prep=prep)
        except KeyboardInterrupt:
            # every finished chunk is in the folder's checkpoint; the run continues from there
            print(f"\ninterrupted: the finished steps are saved; continue with --resume {out}", file=sys.stderr)
            return 130
    if distributed.is_main():
        report(summary, out)
    return 0


def _fail(e: Exception) -> int:
    msg = " ".join(str(e).split())  # one line, whatever the message held
    print(f"error: {msg}", file=sys.stderr)
    return 2


def report_cv(rec: dict) -> None:
    """The grid's mean fold scores, the choice marked."""
    sc = rec["scores"]
    print(f"{rec['k']}-fold cross-validation, {len(rec['settings'])} settings, {rec['wall_s']:.1f} s:")
    for g, s in enumerate(rec["settings"]):
        mark = "  <- chosen" if g == rec["choice"]["index"] else ""
        mean, std = sc["mean_val_mse"][g], sc["std_val_mse"][g]
        shown = "failed" if mean is None else f"{mean:.4g} ± {std:.2g}"
        print(f"  {'  '.join(f'{k} {v}' for k, v in s.items())}: fold val MSE {shown}{mark}")


def report(summary: dict, out: str) -> None:
    import numpy as np

    f = summary["final"]
    print(f"{summary['solver']}: {len(summary['seeds'])} seeds, {summary['wall_s']:.1f} s (+{summary['compile_s']:.1f} s compile) -> {out}")
    rel = summary.get("relative", {})

    def num(v, fmt, missing="—"):
        """``missing`` for no number (NaN in memory, null in JSON: no held-out entries, an exact-fit
        reference, a diverged run); inf as such (JSON holds it as the string "inf")."""
        if isinstance(v, str):
            return v
        if v is None or np.isnan(v):
            return missing
        return format(v, fmt) if np.isfinite(v) else ("inf" if v > 0 else "-inf")

    def ratio(name, k, fmt):
        return num(rel[name][k], fmt)

    for k, s in enumerate(summary["seeds"]):
        line = (f"  seed {s:4d}: steps {int(f['steps'][k]):6d}  train {num(f['train_mse'][k], '.4g', 'nan')}  "
                f"val {num(f['val_mse'][k], '.4g')}")
        if "val_wmse" in f:  # the held-out entries carry weights
            line += f"  val weighted {num(f['val_wmse'][k], '.4g')}"
        if "truth_val" in rel:
            line += f"  val/theoretical {ratio('truth_val', k, '.3g')}"
        if "oracle_train" in rel:
            line += f"  train/oracle {ratio('oracle_train', k, '.4g')}"
        print(line)
    if "success_rate" in summary:
        print(f"  success (train <= {success.FACTOR:g} x oracle + {success.FLOOR_REL:g} x mean V^2): "
              f"{summary['success_rate']:.0%}")
