"""Float16 generation bundles (``graphc build --kv-cache --dtype float16``).

Oracles: the plain (no-cache) float16 build of the same spec and weights, run on
the whole sequence (it shares only the weights and the layer math with the cached
steps), the plain float32 build, and the float32 bundle's greedy ids.

Tolerance: relative RMS 1e-2 over the logits (RMS of the difference / RMS of the
float32 logits). Float16 rounds to 2^-11 relative (4.9e-4); a 2-layer model rounds
every activation and sums 64-wide dot products, so float16 noise of ~1e-3 relative
is expected (measured here: 1.2e-3 to 1.4e-3, cached steps against either plain
build), while a wrong position, mask or cache column moves the logits by O(1)
relative. Greedy ids may legitimately differ from float32's where float32's top-2
margin is within float16's noise, so ids are compared up to the first such step
(the test requires at least 10 ids to be checked, so it cannot pass vacuously).
"""
from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc.compiler import compile_spec
from graphc.errors import GraphcError
from graphc.expand import build_graph
from graphc.generation.bundle import load_bundle
from graphc.generation.bundle_write import build_bundle
from graphc.generation.runner import DecoderRunner
from graphc.ir.precision import convert_to_float16
from graphc.specfile import load_spec
from helpers import cli, random_weights
from kv_helpers import session
from test_kv_cache import LLAMA

REL_RMS = 1e-2
PROMPTS = [[1, 17, 40, 8, 33, 25], [1, 60, 4], [1, 33, 71, 12]]       # left-padded to 6 with pad 0


def _rel_rms(got, want) -> float:
    got, want = got.astype(np.float64), want.astype(np.float64)
    return float(np.sqrt(np.mean((got - want) ** 2)) / np.sqrt(np.mean(want ** 2)))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny LLaMA-like spec (GQA, rope, RMSNorm, SwiGLU): plain float32/float16
    builds and bundles float32 concat, float16 concat, float16 shared (ort)."""
    tmp = tmp_path_factory.mktemp("f16gen")
    spec = tmp / "model.yaml"
    spec.write_text(LLAMA.format(rope="half"))
    w = random_weights(build_graph(load_spec(spec)), 0, 0.15)
    plain = {dt: compile_spec(spec, dict(w), dtype=dt).to_bytes() for dt in ("float32", "float16")}
    bundles = {}
    for tag, kw in [("f32", {}), ("f16", dict(dtype="float16")),
                    ("f16_shared", dict(dtype="float16", target="ort", cache_layout="shared"))]:
        config = build_bundle(spec, tmp / tag, dict(w), verify=True, **kw)
        assert config["dtype"] == kw.get("dtype", "float32")
        bundles[tag] = tmp / tag
    return spec, plain, bundles


@pytest.mark.parametrize("tag", ["f16", "f16_shared"])
def test_float16_steps_equal_the_plain_float16_full_forward(built, tag):
    _, plain, bundles = built
    ids = np.random.default_rng(3).integers(3, 80, (2, 10))
    full = {dt: session(m).run(None, {"tokens": ids})[0] for dt, m in plain.items()}       # [B, S, V]
    assert full["float16"].dtype == np.float16
    dec = DecoderRunner(load_bundle(bundles[tag]), threads=1)
    assert dec.float == np.float16                          # the caches it feeds are float16
    got = [dec.start(ids[:, :3], np.ones((2, 3), np.int64), 7)]
    got += [dec.step(ids[:, t]) for t in range(3, 10)]
    got = np.stack(got, 1)                                  # [B, 8, V]: positions 2..9
    assert np.isfinite(got).all()
    assert _rel_rms(got, full["float16"][:, 2:]) <= REL_RMS
    assert _rel_rms(got, full["float32"][:, 2:]) <= REL_RMS


def test_float16_greedy_ids_equal_float32_where_the_margin_is_clear(built):
    """Left-padded batch (rows fully masked at the pads: the shared layout's bias must
    stay finite in float16). Ids must agree up to the first step where float32's top-2
    margin is below 0.05 (~10x the measured float16 logit noise at this scale)."""
    _, _, bundles = built
    width = max(map(len, PROMPTS))
    ids = np.zeros((3, width), np.int64)
    for r, p in enumerate(PROMPTS):
        ids[r, width - len(p):] = p
    want = graphc.generate(bundles["f32"], input_ids=ids, max_new_tokens=10)
    dec = DecoderRunner(load_bundle(bundles["f32"]), threads=1)       # float32 logits along want's path
    logits = [dec.start(ids, (np.cumsum(ids != 0, 1) > 0).astype(np.int64), 10)]
    logits += [dec.step(want[:, t]) for t in range(want.shape[1] - 1)]
    top = np.sort(np.stack(logits, 1), -1)
    margin = top[..., -1] - top[..., -2]                                 # [B, steps]
    for tag in ("f16", "f16_shared"):
        got = graphc.generate(bundles[tag], input_ids=ids, max_new_tokens=10)
        checked = 0
        for r in range(3):
            close = np.nonzero(margin[r] < 0.05)[0]
            upto = close[0] + 1 if len(close) else want.shape[1]         # the close step itself may differ
            np.testing.assert_array_equal(got[r, :upto - 1], want[r, :upto - 1], err_msg=f"{tag} row {r}")
            checked += upto - 1
        assert checked >= 10, f"{tag}: only {checked} ids had a clear margin"


def test_float32_lowest_mask_constant_becomes_float16_lowest_not_inf():
    """The shared layout's padding bias is a constant holding float32's lowest value;
    cast as is it is -inf in float16 (0/0 = NaN in a row whose keys are all padding),
    and the range check refused it, so no float16 shared bundle could be built."""
    from graphc.ir.builder import Builder
    from graphc.ir.graph import Graph
    g = Graph("t")
    b = Builder(g)
    x = b.input("x", "float32", (2,), None)
    low = b.const(np.array(np.finfo(np.float32).min, np.float32), "masked_score")
    near = b.const(np.array([np.finfo(np.float32).min, 0], np.float32), "not_a_sentinel")
    b.op("Add", [b.op("Add", [x, low]), near])
    with pytest.raises(GraphcError, match="beyond float16's range"):     # a real value out of range: refused
        convert_to_float16(g)
    g = Graph("t")
    b = Builder(g)
    x = b.input("x", "float32", (2,), None)
    low = b.const(np.array(np.finfo(np.float32).min, np.float32), "masked_score")
    b.op("Add", [x, low])
    convert_to_float16(g)
    data = g.value(low.name).data
    assert data.dtype == np.float16 and np.all(data == np.finfo(np.float16).min)


def test_cli_float16_bundle_generates_like_float32(built, tmp_path):
    spec, _, bundles = built
    out = tmp_path / "b16"
    rc, _, err = cli("build", spec, "--kv-cache", "--dtype", "float16", "--target", "ort", "-o", out)
    assert rc == 0, err
    args = ("--input-ids", "1,17,40,8", "--max-new-tokens", "6")
    rc, ids16, err = cli("generate", out, *args)
    assert rc == 0, err
    rc, _, err = cli("build", spec, "--kv-cache", "-o", tmp_path / "b32")       # the same seeded weights
    assert rc == 0, err
    rc, ids32, err = cli("generate", tmp_path / "b32", *args)
    assert rc == 0 and ids16 == ids32 and len(ids16.split(",")) == 6, (ids16, ids32, err)


def test_float16_with_int8_is_refused(built, tmp_path):
    spec, _, _ = built
    rc, _, err = cli("build", spec, "--kv-cache", "--dtype", "float16", "--quantize", "int8", "-o", tmp_path / "q")
    assert rc == 2 and "hint:" in err and "float16" in err and not (tmp_path / "q").exists(), err
