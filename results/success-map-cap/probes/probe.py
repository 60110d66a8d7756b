"""Train MSE over the map's threshold, every EVERY iterations, per seed, for one solver variant.

    git apply results/success-map-cap/probes/variants.patch    # on 8d0fab9; the variants are switched by
    CAP_SIDE=up python results/success-map-cap/probes/probe.py '{"decay": 4, "seeds": 4}' 3000 500 \
        '{"max_step": 0.5, "restarts": 8}'

CONFIG: run.py settings of the synthetic cell (JSON); STEPS, EVERY; SOLVER: make_gauss_newton
keywords (JSON; restarts 0 unless given). Each seed draws what ``run.py --seed S`` draws and starts
from the same blind start. The threshold is the success map's, from the best-known train MSE of
results/success-map-now (1.01 × best-known + the floor); "done" when a stopping test ended the seed.
"""
import json
import os
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
sys.path.insert(0, ROOT)
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
from lrfactor import config as C  # noqa: E402
from lrfactor import losses  # noqa: E402
from lrfactor.config import RunConfig  # noqa: E402
from lrfactor.experiment import prepare  # noqa: E402
from lrfactor.solvers.gauss_newton import make_gauss_newton  # noqa: E402

cfg = C.resolve(RunConfig(solver="gauss_newton", **json.loads(sys.argv[1])))
steps, every = int(sys.argv[2]), int(sys.argv[3])
kw = dict(rank=cfg.rank, restarts=0, reg=cfg.reg, init=cfg.init)
kw.update(json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})
cells = json.load(open(os.path.join(ROOT, "results", "success-map-now", "map.json")))["cells"]
cell = cells["n%d-m%d-k%d-d%g-o%g-r%d" % (cfg.n, cfg.m, cfg.true_rank, cfg.decay, cfg.observed, cfg.rank)]
prep = prepare(cfg)
solver = make_gauss_newton(**kw)
print(json.dumps({"config": sys.argv[1], "solver": kw, "env": {k: v for k, v in os.environ.items()
                                                                 if k in ("CAP_SIDE", "BT_CAP", "ALT_CAP")}}))
for i, seed in enumerate(range(cfg.seed, cfg.seed + cfg.seeds)):
    thr = 1.01 * cell["best_train_mse"][str(seed)] + cell["floor"][str(seed)]
    prob = jax.tree.map(lambda x: x[i], prep.problem)
    st = solver.init(solver.init_params(jax.random.fold_in(prep.keys[i], 1), prob), prob)
    run = jax.jit(lambda st: jax.lax.scan(lambda c, _: (solver.step(c, prob), None), st, None, length=every)[0])
    out, t = [], time.time()
    for k in range(0, steps, every):
        st = run(st)
        out.append("%d:%.3g" % (k + every, float(losses.train_mse(st.params, prob)) / thr))
        if bool(st.done):
            out.append("done")
            break
    print(" seed", seed, " ".join(out), "time %.1f" % (time.time() - t), flush=True)
