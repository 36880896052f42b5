"""Seeded initialisation: deterministic whatever the threads do, and drawn from
the distributions graphc.ir.builder.Init names (checked by statistics against
the formulas, with the tolerances stated at each check)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import graphc.weight_init as W
from graphc.compiler import compile_spec
from graphc.ir import Init, TensorType, ValueInfo
from graphc.shapes import Dim

SPECS = Path(__file__).resolve().parent.parent / "specs"


def _param(name: str, shape, init: Init) -> ValueInfo:
    return ValueInfo(name, TensorType("float32", tuple(Dim.const(s) for s in shape)), "param", init=init)


def test_threads_do_not_change_the_bytes(monkeypatch):
    """The same model from one drawing thread and from four, every parameter
    drawn in the pool (the size threshold lowered to zero)."""
    monkeypatch.setattr(W, "PARALLEL_INIT_BYTES", 0)
    built = {}
    for threads in (1, 4):
        monkeypatch.setattr(W, "INIT_THREADS", threads)
        built[threads] = compile_spec(SPECS / "mha.yaml", seed=5).to_bytes()
    assert built[1] == built[4]


def test_values_follow_the_name_not_the_order():
    ps = [_param(f"layer.{i}.weight", (64, 32), Init("uniform", 0.1)) for i in range(6)]
    forward = list(W.initial_values(ps, 3, W.PARALLEL_INIT_BYTES))         # pool
    backward = list(W.initial_values(ps[::-1], 3, 0))                       # one thread, reversed
    for a, b in zip(forward, backward[::-1]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(forward[0], forward[1])                       # another name, other values
    assert not np.array_equal(forward[0], W.initial_value(ps[0], 4))        # another seed, other values


N = 1 << 20          # one million draws: the standard error of a mean is 1e-3 of the spread


@pytest.mark.parametrize("a", [0.05, 1.0])
def test_uniform(a):
    drawn = W.initial_value(_param("u", (1024, 1024), Init("uniform", a)), 0)
    assert drawn.dtype == np.float32 and drawn.shape == (1024, 1024)
    x = drawn.astype(np.float64).ravel()
    bound = float(np.float32(a))                                              # the bound as float32 rounds it
    assert -bound <= x.min() and x.max() <= bound
    assert x.min() < -a * 0.999 and x.max() > a * 0.999                      # the whole interval is used
    sd = a / math.sqrt(3)                                                     # U(-a, a): variance a^2 / 3
    assert abs(x.mean()) < 5 * sd / math.sqrt(N)                              # 5 standard errors
    assert abs(x.std() / sd - 1) < 0.005                                      # sd of the sd ~ 0.9e-3 here
    hist, _ = np.histogram(x, bins=16, range=(-a, a))
    assert np.all(np.abs(hist / (N / 16) - 1) < 0.02)                          # flat: 16 bins within 2%


@pytest.mark.parametrize("a", [0.02, 1.0])
def test_normal(a):
    x = W.initial_value(_param("n", (1024, 1024), Init("normal", a)), 0).astype(np.float64).ravel()
    assert abs(x.mean()) < 5 * a / math.sqrt(N)
    assert abs(x.std() / a - 1) < 0.005
    within = np.mean(np.abs(x) < a)                                           # P(|z| < 1) = erf(1/sqrt 2)
    assert abs(within - math.erf(1 / math.sqrt(2))) < 0.003                   # 6 standard errors (4.6e-4)
    assert abs(np.mean(np.abs(x) < 2 * a) - math.erf(2 / math.sqrt(2))) < 0.002


def test_xavier_uniform_bound_and_zero_row():
    shape = (1536, 512)                                                       # torch: fan_out, fan_in
    x = W.initial_value(_param("x", shape, Init("xavier_uniform", 1.0)), 0).astype(np.float64)
    bound = float(np.float32(math.sqrt(6.0 / (512 + 1536))))
    assert -bound <= x.min() and x.max() <= bound and x.max() > 0.999 * bound
    assert abs(x.std() / (bound / math.sqrt(3)) - 1) < 0.01
    e = W.initial_value(_param("e", (100, 64), Init("normal", 1.0, zero_row=7)), 0)
    assert not e[7].any() and np.count_nonzero(e[6]) == 64


def test_independent_across_names():
    a = W.initial_value(_param("p.a", (N,), Init("normal", 1.0)), 0).astype(np.float64)
    b = W.initial_value(_param("p.b", (N,), Init("normal", 1.0)), 0).astype(np.float64)
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / math.sqrt(N)                   # 5 standard errors of r
