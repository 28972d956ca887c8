"""bench/train.py's bookkeeping: the training clock that leaves evaluations out, and the equal-time and
equal-FVU readings of the curves (the peers themselves never run in the test suite)."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

SPEC = importlib.util.spec_from_file_location("bench_train", Path(__file__).parents[1] / "bench" / "train.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


class FakeClock:
    """perf_counter and process_time that move only when told to."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    process_time = perf_counter


def test_feed_evaluates_between_steps_and_its_clock_leaves_evaluations_out(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(bench, "time", clock)
    evaluated = []

    def evaluate(with_dead):
        evaluated.append(with_dead)
        clock.now += 100.0  # an evaluation is slow: none of it may count as training
        return {"fvu": 1.0 / (1 + len(evaluated)), "l0": 4.0, **({"dead_fraction": 0.5} if with_dead else {})}

    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    batches = [np.array([i % 10, (i + 1) % 10]) for i in range(7)]
    feed = bench.Feed(x, batches, evaluate, SimpleNamespace(steps=[3, 7], eval_every=2))
    seen = []
    for batch in feed:  # as overcomplete's train_sae reads it
        seen.append(batch.numpy())
        clock.now += 1.0  # one training step takes a second
    assert [p["step"] for p in feed.curve] == [2, 3, 4, 6, 7]
    assert [p["seconds"] for p in feed.curve] == [2.0, 3.0, 4.0, 6.0, 7.0]
    assert evaluated == [False, True, False, False, True]  # dead latents only at the table's steps
    assert sorted(feed.table) == [3, 7] and feed.table[7]["dead_fraction"] == 0.5
    np.testing.assert_array_equal(seen[4], x[[4, 5]])

    feed = bench.Feed(x, batches, evaluate, SimpleNamespace(steps=[7], eval_every=5))
    for _ in range(7):  # as SAELens reads it: next() per step, never once more after the last
        next(feed)
        clock.now += 1.0
    feed.record(7)
    feed.record(7)  # recorded once
    assert [(p["step"], p["seconds"]) for p in feed.curve] == [(5, 5.0), (7, 7.0)]


def test_equal_time_and_equal_fvu_readings_of_a_curve():
    curve = [{"step": 5, "seconds": 10.0, "fvu": 0.8}, {"step": 10, "seconds": 20.0, "fvu": 0.6}]
    assert bench.seconds_to_reach(curve, 0.7) == pytest.approx(15.0)  # halfway between the evaluations
    assert bench.seconds_to_reach(curve, 0.9) == pytest.approx(10.0 * 0.1 / 0.2)  # from (0 s, FVU 1)
    assert bench.seconds_to_reach(curve, 0.5) is None
    assert bench.reached_within(curve, 19.9)["step"] == 5
    assert bench.reached_within(curve, 20.0)["step"] == 10
    assert bench.reached_within(curve, 9.0) is None


def test_held_out_rows_share_no_source_image_with_training_rows():
    train, held_out = bench.split(600, rows_per_image=6)
    assert len(held_out) == 60 and len(train) + len(held_out) == 600
    assert not set(train // 6) & set(held_out // 6)
