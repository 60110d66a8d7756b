"""What Hessian tracing costs: the same Adam run with and without ``--hessian-every``.

    python experiments/trace_overhead.py [--seeds 10] [--steps 1000] [--every 50]
                                         [--out results/trace-overhead]

Runs ``experiments/run.py --solver adam`` twice on the question's problem with
the question's settings (early stopping included, capped at ``--steps``
epochs so both runs do the same work), once plain and once traced every
``--every`` epochs, each in its own process. Reports

- the whole process wall time of each (imports, data, compilation, training,
  tracing, writing results) and their ratio: the overhead a user sees;
- the driver's own split: training wall time, compilation, and the time spent
  in traces (their compilation included).

The JSON (versions, device, precision, both summaries) is written to
``--out/trace-overhead.json``; the run folders themselves are temporary.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from lrfactor.results import environment, read_json, write_json  # noqa: E402


def one_run(args, out):
    cmd = [sys.executable, os.path.join(HERE, "run.py"), "--solver", "adam", "--seeds", str(args.seeds),
           "--steps", str(args.steps), "--out", out, "--quiet"] + args.extra
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    total = time.perf_counter() - t0
    summary = read_json(os.path.join(out, "summary.json"))
    config = read_json(os.path.join(out, "config.json"))
    return {"command": cmd, "process_s": total, "wall_s": summary["wall_s"], "compile_s": summary["compile_s"],
            "trace_s": summary.get("trace_s", 0.0), "epochs": max(summary["final"]["steps"]),
            "config": config}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--steps", type=int, default=1000, help="epoch cap (the question's runs took 1000-1180)")
    p.add_argument("--every", type=int, default=50, help="trace every this many epochs")
    p.add_argument("--out", default="results/trace-overhead")
    p.add_argument("extra", nargs="*", help="further run.py flags for both runs (after --)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        plain = one_run(args, os.path.join(tmp, "plain"))
        args_traced = argparse.Namespace(**{**vars(args), "extra": args.extra + ["--hessian-every", str(args.every)]})
        traced = one_run(args_traced, os.path.join(tmp, "traced"))
    n_traces = traced["epochs"] // args.every + 2  # the start, every K epochs, the end
    out = {
        "environment": environment(), "args": vars(args), "plain": plain, "traced": traced,
        "overhead_process": traced["process_s"] / plain["process_s"] - 1.0,
        "overhead_in_driver": traced["trace_s"] / (plain["wall_s"] + plain["compile_s"]),
        "approx_traces": n_traces,
    }
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "trace-overhead.json"), out)
    print(f"{args.seeds} seeds, {plain['epochs']} epochs: plain {plain['process_s']:.1f} s "
          f"(train {plain['wall_s']:.1f} s, compile {plain['compile_s']:.1f} s); traced every {args.every}: "
          f"{traced['process_s']:.1f} s (traces {traced['trace_s']:.1f} s over ~{n_traces})")
    print(f"overhead: {100 * out['overhead_process']:+.1f} % whole process, "
          f"{100 * out['overhead_in_driver']:+.1f} % trace time / plain training+compile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
