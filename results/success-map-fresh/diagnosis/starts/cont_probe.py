"""Prototype: rank continuation: LM at rank 1, 2, ..., r, each new column seeded from the residual's leading singular pair."""
import dataclasses, os, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), *[".."] * 4))
import numpy as np, jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from lrfactor.config import FIELDS, RunConfig
from lrfactor.experiment import prepare
from lrfactor.factors import Factors
from lrfactor.results import load_run
from lrfactor.solvers.gauss_newton import make_gauss_newton
run_dir, seeds_want, stage = sys.argv[1], [int(x) for x in sys.argv[2].split(",")], int(sys.argv[3])
final = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
run = load_run(run_dir)
cfg = dataclasses.replace(RunConfig(), **{k: v for k, v in run["config"]["config"].items() if k in FIELDS})
seeds = list(run["summary"]["seeds"])
prep = prepare(cfg, seeds=seeds_want)
orc = run["summary"]["reference"]["oracle_train_mse"]
solvers = {q: make_gauss_newton(loss="frobenius", rank=q, restarts=0) for q in range(1, cfg.rank + 1)}
for k, s in enumerate(seeds_want):
    i = seeds.index(s); t = time.time()
    prob = jax.tree.map(lambda x: x[k], prep.problem)
    M, V = np.asarray(prob.train, float), np.asarray(prob.V)
    W = np.zeros((V.shape[0], 0)); H = np.zeros((V.shape[1], 0)); total = 0
    for q in range(1, cfg.rank + 1):
        R = M * (V - W @ H.T) / M.mean()
        U, S, Vt = np.linalg.svd(R, full_matrices=False)
        u, v = U[:, 0], Vt[0]
        if u.sum() < 0: u, v = -u, -v
        w, h = np.maximum(u, 0) * np.sqrt(S[0]), np.maximum(v, 0) * np.sqrt(S[0])
        w[w <= 0] = 1e-3 * w[w > 0].mean(); h[h <= 0] = 1e-3 * h[h > 0].mean()
        W, H = np.column_stack([W, w]), np.column_stack([H, h])
        sol = solvers[q]
        st = sol.init(Factors(jnp.log(jnp.asarray(W)), jnp.log(jnp.asarray(H))), prob)
        step = jax.jit(lambda st, sol=sol: sol.step(st, prob))
        n = stage if q < cfg.rank else final
        for it in range(n):
            st = step(st); total += 1
            if bool(st.done): break
        W, H = np.exp(np.asarray(st.params.A)), np.exp(np.asarray(st.params.B))
        f = float(sol.objective(st.params, prob))
        print(f"seed {s} rank {q}: {it+1} steps, train {f:.4g}" + (f" (x{f/orc[i]:.3g} oracle) done {bool(st.done)} total {total} steps {time.time()-t:.0f}s" if q == cfg.rank else ""))
