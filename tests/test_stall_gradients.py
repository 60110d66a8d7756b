"""experiments/stall_gradients.py: the relative gradient at the stall that ended a seed, from a saved history."""

import importlib.util
import json
import os

import numpy as np
import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
spec = importlib.util.spec_from_file_location("stall_gradients", os.path.join(ROOT, "experiments", "stall_gradients.py"))
sg = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sg)


def _run(folder, *, oracle=(1.0, 2.0, 4.0)):
    """Three seeds over 20 steps: seed 0 ended by the rule at step 12, seed 1 by a stopping test at step 15 (no
    stall), seed 2 by the rule at step 20 after a restart; F halves each step, max|g| = 0.1·F of the step's start
    point except 10·F at seed 2's last step."""
    T = 20
    F = np.tile(2.0 ** -np.arange(T + 1.0), (3, 1))
    g = np.full((3, T + 1), np.nan)
    g[:, 1:] = 0.1 * F[:, :-1]
    g[2, T] = 10 * F[2, T - 1]
    stalls, done = np.zeros((3, T + 1), int), np.zeros((3, T + 1), bool)
    stalls[0, 12:], done[0, 12:] = 1, True
    done[1, 15:] = True
    stalls[2, 8:], stalls[2, 20:], done[2, 20:] = 1, 2, True
    train = np.tile([1.0, 2.0, 4.4], (T + 1, 1)).T  # seed 2 ends 10 % above its oracle
    np.savez(os.path.join(folder, "history.npz"), run_F=F, stalls=stalls, done=done, grad_inf=g, train_mse=train)
    with open(os.path.join(folder, "summary.json"), "w") as fh:
        json.dump({"seeds": [5, 6, 7], "final": {"steps": [12, 15, 20]},
                   "reference": {"oracle_train_mse": list(oracle)}}, fh)


def test_seeds_ended_by_the_rule_and_their_gradients(tmp_path):
    _run(str(tmp_path))
    rows = sg.ended_by_rule(str(tmp_path))
    assert [r[:2] for r in rows] == [(5, 12), (7, 20)]  # seed 6 ended by a stopping test, not the rule
    seed, T, ratio, last, least = rows[0]
    assert ratio == 1.0 and last == pytest.approx(0.1) and least == pytest.approx(0.1)  # g[t] / F[t-1]
    seed, T, ratio, last, least = rows[1]
    assert ratio == pytest.approx(1.1) and last == pytest.approx(10.0) and least == pytest.approx(0.1)


def test_report_and_bad_input(tmp_path, capsys):
    _run(str(tmp_path))
    assert sg.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"| {tmp_path} | 7 | 20 | 1.1 | 1.00e+01 | 1.00e-01 |" in out
    assert "1 seeds ended at the oracle: least relative gradient 1.00e-01 – 1.00e-01" in out
    assert "keeps 0 of the 1 seeds at the oracle running too" in out
    assert sg.main([str(tmp_path / "nowhere")]) == 2
    np.savez(os.path.join(tmp_path, "history.npz"), run_F=np.ones((1, 2)))
    assert sg.main([str(tmp_path)]) == 2
    assert "no 'stalls'" in capsys.readouterr().err
