"""What a synthetic run's fit has not resolved, read against the truth it was drawn from.

    python experiments/component_diagnosis.py [--trace] RUN [RUN ...]

For every seed of a finished ``run.py`` folder on the synthetic problem
(the truth is drawn again from the run's config, exactly as run.py drew it):

- the final train MSE against the oracle's, and the run's state at the end
  (steps, ``done``, restart, the run that found the point, max|g|, λ);
- the singular values of the fit's error P − V over the whole matrix (the
  held-out entries too), next to those of the true components the model
  rank leaves out (V minus its first r true components: what even the
  truncated truth misses) and the truth's own component scales. An error
  singular value above the left-out part's largest marks a piece of the
  kept signal the fit has not resolved; its size says at which component
  scale. A model component need not match one true component (a
  non-negative fit of rank r spreads the large components over several), so
  the error is compared, not the columns;
- how many factor entries sit near the boundary of the non-negative orthant
  (below ``BOUNDARY`` × their column's largest entry: in log space, far down
  a direction with no gradient to bring them back);
- with ``--trace``: the Hessian of the mean training loss at the saved point,
  traced as ``run.py --hessian-every`` traces it (Lanczos with the run's
  ``lanczos_steps`` and ``slq_probes``, gauge removed): λmax, λmin, the
  significant negative index. A negative λmin beyond rounding is a saddle;
  none, with the gradient small, a minimum or a valley;
- with ``hessian.npz`` (``--hessian-every``): per traced step the train MSE,
  λmax and λmin of the Hessian of the mean training loss (gauge removed), the
  significant negative index, ‖g‖ and the damping λ at that step, and the
  largest singular value of the error then.

Prints markdown. Reads files only, except that the truth is drawn again.
"""

from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402


def component_scales(W, H):
    """Per true component k: ‖W_k‖·‖H_k‖, the Frobenius norm of its rank-one term."""
    return np.linalg.norm(W, axis=0) * np.linalg.norm(H, axis=0)


BOUNDARY = 1e-8  # a factor entry this small relative to its column's largest counts as at the boundary


def at_boundary(X):
    """(entries below BOUNDARY × their column's largest, the least such ratio)."""
    ratio = X / np.max(X, axis=0, keepdims=True)
    return int(np.sum(ratio < BOUNDARY)), float(ratio.min())


def best_state(fin, k) -> str:
    """max|g| and λ at the returned point, from runs that record them (older runs: "not recorded")."""
    if "best_grad_inf" not in fin:
        return "not recorded"
    return f"max|g| {float(fin['best_grad_inf'][k]):.3g}, λ {float(fin['best_lam'][k]):.3g}"


def svals(E, k):
    return np.linalg.svd(E, compute_uv=False)[:k]


def config_of(cfg_dict):
    from lrfactor.config import FIELDS, RunConfig

    return dataclasses.replace(RunConfig(), **{k: v for k, v in cfg_dict.items() if k in FIELDS})


def trace_at(cfg, W, H, seed):
    """The tracer's numbers at the factors (W, H) of ``seed``'s problem (float64)."""
    import jax
    import jax.numpy as jnp

    from lrfactor import losses
    from lrfactor.experiment import prepare
    from lrfactor.factors import Factors
    from lrfactor.hessian import make_tracer

    prep = prepare(dataclasses.replace(cfg, seeds=1), seeds=[seed])
    prob = jax.tree.map(lambda x: x[0], prep.problem)
    tracer = make_tracer(lambda p, q: losses.objective(p, q, cfg.loss, cfg.l2 or 0.0, cfg.reg), cfg)
    out = jax.jit(tracer)(Factors(jnp.log(jnp.asarray(W)), jnp.log(jnp.asarray(H))), prob, jax.random.PRNGKey(seed))
    return {k: np.asarray(v) for k, v in out.items()}


def truth_of(cfg_dict, seeds):
    import jax

    jax.config.update("jax_enable_x64", True)
    from lrfactor.experiment import prepare

    prep = prepare(config_of(cfg_dict), seeds=seeds)
    S = len(seeds)
    return (np.asarray(prep.truth[0])[:S], np.asarray(prep.truth[1])[:S], np.asarray(prep.problem.train)[:S])


def report(folder: str, trace: bool = False) -> str:
    from lrfactor.results import load_run

    run = load_run(folder)
    cfg, summ, hist = run["config"]["config"], run["summary"], run["history"]
    seeds = list(summ["seeds"])
    fac = np.load(os.path.join(folder, "factors.npz"))
    Wt, Ht, _ = truth_of(cfg, seeds)
    fin, ref = summ["final"], summ["reference"]
    lam_hist = np.asarray(hist["lam"])
    out = [f"## {os.path.normpath(folder)}", "",
           f"decay {cfg['decay']:g}, observed {cfg['observed']:g}, rank {cfg['rank']} (true {cfg['true_rank']}), "
           f"budget {cfg['steps']}, restarts {cfg.get('restarts')}, schur {cfg.get('schur_precision')}", ""]
    for k, s in enumerate(seeds):
        W, H = fac["W"][k], fac["H"][k]
        r = W.shape[1]
        V = Wt[k] @ Ht[k].T
        E = W @ H.T - V
        left = Wt[k][:, r:] @ Ht[k][:, r:].T  # what the truncated truth leaves out
        lam = float(fin["lam"][k])
        oracle = float(ref["oracle_train_mse"][k])
        nv = min(Wt.shape[2], 12)
        out += [f"### seed {s}: final train MSE {float(fin['train_mse'][k]):.3g} = "
                f"{float(fin['train_mse'][k]) / oracle:.3g}× the oracle's ({oracle:.3g}); steps {fin['steps'][k]}, "
                f"done {fin['done'][k]}, restart {fin.get('restart', [None] * len(seeds))[k]}, best run "
                f"{fin.get('best_run', [None] * len(seeds))[k]}, max|g| {float(fin['grad_inf'][k]):.3g}, λ {lam:.3g} "
                f"(at the best point: {best_state(fin, k)}); "
                "entries at the boundary: {} of W's {} (least entry / its column's largest {:.2g}), "
                "{} of H's {} ({:.2g})".format(at_boundary(W)[0], W.size, at_boundary(W)[1], at_boundary(H)[0], H.size,
                                               at_boundary(H)[1]),
                "",
                "| | " + " | ".join(str(i) for i in range(nv)) + " |", "|---|" + "---|" * nv,
                "| true component scale ‖W_k‖‖H_k‖ | " + " | ".join(f"{x:.3g}" for x in component_scales(Wt[k], Ht[k])[:nv]) + " |",
                "| singular values of the left-out part | " + " | ".join(f"{x:.3g}" for x in svals(left, nv)) + " |",
                "| singular values of the fit's error P − V | " + " | ".join(f"{x:.3g}" for x in svals(E, nv)) + " |",
                ""]
        if trace:
            tr = trace_at(config_of(cfg), W, H, s)
            out += [f"Hessian at the saved point: λmax {float(tr['eig_max']):.3g}, λmin {float(tr['eig_min']):.3g}, "
                    f"significant negative index {float(tr['index_significant']):.3g}, ‖g‖ {float(tr['grad_norm']):.3g}, "
                    f"mean loss {float(tr['objective']):.3g}.", ""]
        if "hessian" in run:
            hz = run["hessian"]
            out += ["| step | train MSE | λmax | λmin | index (significant) | ‖g‖ | λ | σ₁(P − V) |",
                    "|---|---|---|---|---|---|---|---|"]
            for t, step in enumerate(np.asarray(hz["steps"])):
                Et = np.exp(hz["A"][k, t]) @ np.exp(hz["B"][k, t]).T - V
                lam_t = lam_hist[k, min(int(step), lam_hist.shape[1] - 1)]
                out.append(f"| {int(step)} | {hist['train_mse'][k][int(step)]:.3g} | {hz['eig_max'][k, t]:.3g} | "
                           f"{hz['eig_min'][k, t]:.3g} | {hz['index_significant'][k, t]:.3g} | "
                           f"{hz['grad_norm'][k, t]:.3g} | {lam_t:.3g} | {svals(Et, 1)[0]:.3g} |")
            out.append("")
    return "\n".join(out)


def main(argv) -> int:
    trace = "--trace" in argv
    argv = [a for a in argv if a != "--trace"]
    if not argv:
        print("error: give one or more run folders", file=sys.stderr)
        return 2
    from lrfactor.results import read_json

    for f in argv:
        if not os.path.exists(os.path.join(f, "factors.npz")):
            print(f"error: {f}: no factors.npz (not a finished run folder)", file=sys.stderr)
            return 2
        if read_json(os.path.join(f, "config.json"))["config"].get("data") is not None:
            print(f"error: {f}: not a run on the synthetic problem (no truth to compare with)", file=sys.stderr)
            return 2
    print("\n".join(report(f, trace) for f in argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
