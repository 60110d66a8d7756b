"""Prototype: LM from an NNDSVD start of the zero-filled observed matrix (instead of the Keras start)."""
import dataclasses, os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), *[".."] * 4))
import numpy as np, jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from lrfactor.config import FIELDS, RunConfig
from lrfactor.experiment import prepare
from lrfactor.factors import Factors
from lrfactor.results import load_run
from lrfactor.solvers.gauss_newton import make_gauss_newton
run_dir, seeds_want, iters = sys.argv[1], [int(x) for x in sys.argv[2].split(",")], int(sys.argv[3])
run = load_run(run_dir)
cfg = dataclasses.replace(RunConfig(), **{k: v for k, v in run["config"]["config"].items() if k in FIELDS})
seeds = list(run["summary"]["seeds"])
prep = prepare(cfg, seeds=seeds_want)
orc = run["summary"]["reference"]["oracle_train_mse"]
solver = make_gauss_newton(loss="frobenius", rank=cfg.rank, restarts=0)

def nndsvd(X, r):
    U, S, Vt = np.linalg.svd(X, full_matrices=False)
    W, H = np.zeros((X.shape[0], r)), np.zeros((X.shape[1], r))
    W[:, 0], H[:, 0] = np.sqrt(S[0]) * np.abs(U[:, 0]), np.sqrt(S[0]) * np.abs(Vt[0])
    for k in range(1, r):
        x, y = U[:, k], Vt[k]
        xp, xn, yp, yn = np.maximum(x, 0), np.maximum(-x, 0), np.maximum(y, 0), np.maximum(-y, 0)
        mp = np.linalg.norm(xp) * np.linalg.norm(yp); mn = np.linalg.norm(xn) * np.linalg.norm(yn)
        if mp >= mn: u, v, sg = xp / np.linalg.norm(xp), yp / np.linalg.norm(yp), mp
        else: u, v, sg = xn / np.linalg.norm(xn), yn / np.linalg.norm(yn), mn
        W[:, k], H[:, k] = np.sqrt(S[k] * sg) * u, np.sqrt(S[k] * sg) * v
    # NNDSVDa-like: zeros filled with a small fraction of the column's mean (log space needs > 0)
    for F in (W, H):
        for k in range(r):
            c = F[:, k]; c[c <= 0] = 1e-3 * c[c > 0].mean()
    return W, H

for k, s in enumerate(seeds_want):
    i = seeds.index(s)
    prob = jax.tree.map(lambda x: x[k], prep.problem)
    M, V = np.asarray(prob.train, float), np.asarray(prob.V)
    X = M * V / M.mean()
    W, H = nndsvd(X, cfg.rank)
    st = solver.init(Factors(jnp.log(jnp.asarray(W)), jnp.log(jnp.asarray(H))), prob)
    step = jax.jit(lambda st: solver.step(st, prob))
    print(f"seed {s}: start f {float(solver.objective(st.params, prob)):.4g}, oracle {orc[i]:.4g}")
    for it in range(iters):
        st = step(st)
        if it % 200 == 199 or bool(st.done):
            f = float(solver.objective(st.params, prob))
            print(f"  it {it+1}: train {f:.4g} (x{f/orc[i]:.3g}) done {bool(st.done)}")
            if bool(st.done): break
