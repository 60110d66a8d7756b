"""The flagship on a chosen list of seeds under several settings, one batch per setting.

    python experiments/variants.py --seeds 0 7 41 48 68 87 --steps 400 \
        --variant "" --variant "max_step=1" --variant "lambda0=0.1" \
        --out results/gn-100-restarts/variants

Each ``--variant`` is a ``;``-separated list of RunConfig fields (``""``: the
defaults). The seeds need not be consecutive (``run.py`` takes a range): each
draws exactly what ``run.py --seed S`` draws (``experiment.prepare(cfg, seeds)``),
all in one batch. Every variant's run folder (config, summary,
history) goes under ``--out``; one line per variant reports successes and the
final train MSE relative to the oracle per seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def parse_variant(text, base):
    upd = {}
    for item in filter(None, text.split(";")):
        key, _, value = item.partition("=")
        if not hasattr(base, key):
            raise SystemExit(f"error: unknown setting {key!r}")
        kind = type(getattr(base, key)) if getattr(base, key) is not None else float
        if kind is bool:  # bool("0") is True
            if value.lower() not in ("0", "1", "true", "false"):
                raise SystemExit(f"error: {key} takes 0/1 or true/false, got {value!r}")
            upd[key] = value.lower() in ("1", "true")
        else:
            upd[key] = kind(value)
    return upd


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--variant", action="append", default=None)
    p.add_argument("--out", default="results/variants")
    a = p.parse_args(argv)

    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from lrfactor import experiment
    from lrfactor.config import RunConfig, resolve

    base = resolve(RunConfig(solver="gauss_newton", seeds=1, steps=a.steps, precision=64))
    variants = [parse_variant(v, base) for v in (a.variant or [""])]
    prep = experiment.prepare(dataclasses.replace(base, seeds=len(a.seeds)), seeds=a.seeds)
    for upd in variants:
        cfg = dataclasses.replace(base, seeds=len(a.seeds), **upd)
        name = "_".join(f"{k}{v}" for k, v in upd.items()) or "default"
        out = os.path.join(a.out, f"{name}-{a.steps}")
        t0 = time.perf_counter()
        s = experiment.execute(cfg, out, progress=False, prep=prep._replace(cfg=cfg))
        rel = np.asarray(s["relative"]["oracle_train"])
        per_seed = " ".join(f"{sd}:{x:.3f}({t})" for sd, x, t in zip(a.seeds, rel, s["final"]["steps"]))
        print(f"{name}: {int(np.sum(s['success']))}/{len(a.seeds)} successes  {per_seed}  "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
