"""experiments/restart_replay.py: the seen-twice rule replayed on a saved history ends a seed where the solver would."""

import importlib.util
import json
import os

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
spec = importlib.util.spec_from_file_location("restart_replay", os.path.join(ROOT, "experiments", "restart_replay.py"))
replay_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(replay_mod)


def _history(tmp_path, ends):
    """One seed whose runs fall linearly to ends[k] over 10 steps, stall for 5, then restart (stalls + 1)."""
    run_F, restart, stalls, best = [10.0], [0], [0], [10.0]
    for k, end in enumerate(ends):
        start = 10.0
        for t in range(1, 16):
            F = start + (end - start) * min(t, 10) / 10
            last = t == 15 and k < len(ends) - 1
            run_F.append(10.0 if last else F)  # the step that restarts records the fresh run's objective
            restart.append(k + 1 if last else k)
            stalls.append(k + 1 if last else k)
            best.append(min(best[-1], F))
    T = len(run_F) - 1
    arrays = {"run_F": run_F, "restart": restart, "stalls": stalls, "objective": best, "val_mse": best}
    np.savez(tmp_path / "history.npz", **{k: np.asarray([v]) for k, v in arrays.items()})
    (tmp_path / "summary.json").write_text(json.dumps({"final": {"steps": [T]}}))
    return T


def test_a_stall_at_the_value_an_earlier_run_reached_ends_the_replayed_seed(tmp_path):
    T = _history(tmp_path, [2.0, 2.0 * (1 + 1e-4), 1.0])
    (steps, stop, obj, obj_stop, _, _), = replay_mod.replay(str(tmp_path))
    assert steps == T and stop == 30  # the second run's restart step: the best value seen twice
    assert obj == 1.0 and obj_stop == 2.0  # what the rule gives up here: the third run's better value


def test_stalls_at_new_values_are_not_cut_short(tmp_path):
    T = _history(tmp_path, [2.0, 1.5, 3.0, 1.0])
    (steps, stop, obj, obj_stop, _, _), = replay_mod.replay(str(tmp_path))
    assert stop == steps == T and obj_stop == obj == 1.0
