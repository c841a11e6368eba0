"""training.loss_window.LossWindow: means and the first non-finite iteration against plain Python
bookkeeping; growth, key changes, errors; no host sync per recorded iteration on CUDA."""
from __future__ import annotations

import math
import random

import pytest
import torch

from training.loss_window import LossWindow


def _losses(values):
    return {k: torch.tensor(v) for k, v in values.items()}


def test_means_match_python_and_window_empties():
    rng = random.Random(0)
    w = LossWindow(4, "cpu")
    rows = [{"l1": rng.random(), "ssim": rng.random(), "total": rng.random() * 3} for _ in range(7)]  # grows past 4
    for i, r in enumerate(rows):
        w.record(100 + i, _losses(r))
    assert len(w) == 7 and w.first_non_finite() is None
    means, bad = w.drain()
    assert bad is None and list(means) == ["l1", "ssim", "total"]
    for k in means:
        want = math.fsum(r[k] for r in rows) / len(rows)
        assert means[k] == pytest.approx(want, rel=1e-6)  # rows are stored as float32
    assert len(w) == 0 and w.drain() == ({}, None)


def test_first_non_finite_names_the_iteration():
    w = LossWindow(10, "cpu")
    for it, total in [(1, 0.5), (2, 0.4), (3, float("nan")), (4, 0.3), (5, float("inf"))]:
        w.record(it, _losses({"l1": 0.1, "total": total}))
        if it == 2:
            assert w.first_non_finite() is None
    assert w.first_non_finite() == 3
    assert w.first_non_finite() == 3  # reading does not consume
    _, bad = w.drain()
    assert bad == 3


def test_key_change_starts_a_new_window_and_total_is_required():
    w = LossWindow(3, "cpu")
    w.record(1, _losses({"l1": 1.0, "total": 1.0}))
    w.record(2, _losses({"l1": 1.0, "xyz": 2.0, "total": 3.0}))
    means, _ = w.drain()
    assert means == {"l1": 1.0, "xyz": 2.0, "total": 3.0}
    with pytest.raises(KeyError, match="total"):
        w.record(3, _losses({"l1": 1.0}))
    with pytest.raises(ValueError, match="capacity"):
        LossWindow(0, "cpu")


def test_records_values_of_tensors_that_require_grad():
    x = torch.tensor(2.0, requires_grad=True)
    w = LossWindow(2, "cpu")
    w.record(1, {"sq": x * x, "total": x * 3})
    assert w.drain()[0] == {"sq": 4.0, "total": 6.0}


@pytest.mark.cuda
def test_cuda_record_does_not_synchronise():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    w = LossWindow(10, "cuda")
    vals = {"l1": torch.rand((), device="cuda"), "total": torch.rand((), device="cuda")}
    w.record(0, vals)  # allocates the buffer
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for it in range(1, 9):
            w.record(it, vals)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    means, bad = w.drain()
    assert bad is None and means["l1"] == pytest.approx(float(vals["l1"]), rel=1e-6)


def test_record_row_matches_record():
    a, b = LossWindow(2, "cpu"), LossWindow(2, "cpu")
    rows = [{"l1": 0.5, "ssim": 0.25, "total": 0.75}, {"l1": 0.1, "ssim": 0.2, "total": 0.3},
            {"l1": 1.0, "ssim": 0.0, "total": 1.0}]
    for it, values in enumerate(rows, 1):
        a.record(it, _losses(values))
        b.record_row(it, tuple(values), torch.tensor(list(values.values())))
    assert a.drain() == b.drain()
    with pytest.raises(ValueError, match="shape"):
        b.record_row(4, ("l1", "total"), torch.zeros(3))
    with pytest.raises(KeyError, match="total"):
        b.record_row(4, ("l1", "ssim"), torch.zeros(2))
