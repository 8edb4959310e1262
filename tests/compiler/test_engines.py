"""Interleaved timing: every round times every engine once, with a pause before each engine so a
spinning thread pool of the previous engine cannot steal the cores."""

import dataclasses

import numpy as np
import pytest
import torch

from npas_lightning.compiler import engines as engines_mod
from npas_lightning.compiler.engines import measure_interleaved, torch_engine


def test_rounds_interleave_engines_with_a_pause_before_each(monkeypatch):
    calls: list[str] = []
    pauses: list[float] = []
    monkeypatch.setattr(engines_mod.time, "sleep", lambda s: (pauses.append(s), calls.append("pause")))
    x = np.random.default_rng(0).standard_normal((1, 8)).astype("float32")
    models = {"a": torch.nn.Linear(8, 4), "b": torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU())}
    engines = []
    for name, model in models.items():
        eng = torch_engine(model, x, threads=1)

        def timed(number, _time=eng.time, _name=name):  # records the order, times the real engine
            calls.append(_name)
            return _time(number)
        engines.append(dataclasses.replace(eng, name=name, time=timed))
    stats = measure_interleaved(engines, number=2, repeat=3, warmup=1, threads=1, target="host",
                                input_shape=[1, 8], pause_s=0.03)
    timed_calls = calls[2:]  # after one warm-up call per engine
    assert calls[:2] == ["a", "b"]
    assert timed_calls == ["pause", "a", "pause", "b"] * 3
    assert pauses == [0.03] * 6
    assert set(stats) == {"a", "b"} and all(s.repeats == 3 and s.runs == 2 for s in stats.values())


def test_min_sample_ms_stretches_each_engines_samples_to_that_long(monkeypatch):
    """A fast engine runs more times per sample than a slow one, so both samples last about
    ``min_sample_ms``; never fewer than ``number``. The engines are real torch models; only their
    per-run times are stated (what the sample sizes are computed from), so the test does not depend
    on this machine's speed."""
    monkeypatch.setattr(engines_mod.time, "sleep", lambda s: None)
    x = np.random.default_rng(0).standard_normal((1, 8)).astype("float32")
    numbers: dict[str, list[int]] = {"fast": [], "slow": []}
    engines = []
    for name, per_run in (("fast", 1e-4), ("slow", 4e-3)):
        eng = torch_engine(torch.nn.Linear(8, 4), x, threads=1)

        def timed(number, _time=eng.time, _name=name, _per_run=per_run):
            numbers[_name].append(number)
            _time(number)
            return _per_run
        engines.append(dataclasses.replace(eng, name=name, time=timed))
    stats = measure_interleaved(engines, number=2, repeat=2, warmup=0, threads=1, target="host",
                                input_shape=[1, 8], min_sample_ms=10.0)
    assert numbers == {"fast": [1, 100, 100], "slow": [1, 3, 3]}  # one estimating run, then the samples
    assert stats["fast"].runs == 100 and stats["slow"].runs == 3
    with pytest.raises(ValueError, match=r"min_sample_ms=-1: expected a number >= 0 \(milliseconds per sample\)"):
        measure_interleaved(engines, number=2, repeat=1, warmup=0, threads=1, target="host", input_shape=[1, 8],
                            min_sample_ms=-1)
