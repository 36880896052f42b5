"""The tutorial's claims hold: every spec it names checks, each step builds and
runs (at reduced sizes, to stay fast), and the hand-written encoder of step 2
is the built-in transformer_encoder of step 3: same parameter names and
shapes, same outputs for the same weights."""
from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from graphc.compiler import check_spec
from graphc.runtime.session import make_session, random_inputs, run_model
from graphc.shapes import parse_expr
from helpers import ROOT, SPECS, cli, compile_text, ort_run, ref_run

TUTORIAL = ROOT / "docs" / "tutorial.md"
STEPS = [SPECS / "seed_mha_concat.yaml", *sorted((SPECS / "tutorial").glob("*.yaml")), SPECS / "transformer_base.yaml"]

# small hyperparameters with the same structure, so every step builds in milliseconds
SMALL = {"d_model": 16, "heads": 4, "d_ff": 32, "n_layers": 2, "vocab": 50, "d_embed": 8, "hidden": 8, "tags": 5}


def _shrunk(path) -> str:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    for k in doc.get("params", {}):
        if k in SMALL:
            doc["params"][k] = SMALL[k]
    for inp in doc["inputs"].values():   # token ranges are written [lo, vocab], so they shrink too
        if inp.get("range") and isinstance(inp["range"][1], int) and inp["range"][1] > SMALL["vocab"]:
            inp["range"] = [inp["range"][0], SMALL["vocab"]]
    return yaml.safe_dump(doc, sort_keys=False)


def _feeds(g, seed=0):
    rng = np.random.default_rng(seed)
    sizes = {**g.dim_examples}
    feeds = {}
    for name in g.inputs:
        t = g.value(name).type
        shape = tuple(d.evaluate(sizes) for d in t.shape)
        if t.dtype.startswith("int"):
            # range ends are integers or expressions over dims ('seq + 1'), as graphc run evaluates them
            lo, hi = (v if isinstance(v, int) else parse_expr(v).evaluate(sizes.get)
                      for v in g.input_ranges.get(name, (0, 2)))
            feeds[name] = rng.integers(lo, hi, size=shape).astype(t.dtype)
        else:
            feeds[name] = rng.standard_normal(shape).astype(t.dtype)
    return feeds


def test_tutorial_names_only_existing_specs():
    text = TUTORIAL.read_text(encoding="utf-8")
    refs = sorted(set(re.findall(r"specs/[A-Za-z0-9_/]+\.yaml", text)))
    assert refs, "the tutorial names no specs"
    for ref in refs:
        assert (ROOT / ref).is_file(), f"docs/tutorial.md refers to {ref}, which does not exist"
        check_spec(ROOT / ref)


@pytest.mark.parametrize("path", STEPS, ids=[p.stem for p in STEPS])
def test_tutorial_step_builds_and_runs(path):
    model, g, _ = compile_text(_shrunk(path), weights="random")
    feeds = _feeds(g)
    got = ort_run(model, feeds)
    for k, v in got.items():
        assert np.all(np.isfinite(v)), k
    if "lstm" not in path.stem:   # the ONNX reference evaluator ignores LSTM sequence_lens
        want = ref_run(model, feeds)
        for k in got:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seq", [1, 2, 40])
def test_tagger_lengths_follow_the_run_time_seq(seq):
    """The tagger's lengths range is [1, seq + 1): --random at any --dim seq draws
    valid lengths (a fixed [1, 6) gave lengths past a short seq, which ORT refuses,
    and never exercised lengths past 5 at a long one)."""
    model, g, _ = compile_text(_shrunk(SPECS / "tutorial" / "lstm_tagger.yaml"), weights="random")
    assert g.input_ranges["lengths"] == (1, "seq + 1")
    session = make_session(model)
    feeds = random_inputs(session, {"batch": 64, "seq": seq})
    assert 1 <= feeds["lengths"].min() and feeds["lengths"].max() <= seq
    assert seq < 6 or feeds["lengths"].max() > 6
    assert run_model(session, feeds)["tag_scores"].shape == (64, seq, SMALL["tags"])


def test_hand_written_encoder_is_the_built_in_one():
    hand, g1, w = compile_text(_shrunk(SPECS / "tutorial" / "encoder_by_hand.yaml"), weights="random")
    built, g2, _ = compile_text(_shrunk(SPECS / "tutorial" / "encoder_builtin.yaml"), weights=w)
    shapes = lambda g: {p.name: p.type.concrete_shape() for p in g.params()}  # noqa: E731
    assert shapes(g1) == shapes(g2)
    feeds = _feeds(g1)
    a, b = ort_run(hand, feeds)["memory"], ort_run(built, feeds)["memory"]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_tutorial_models_match_pytorch():
    """Steps 2, 3 and 5 say a PyTorch state_dict loads unchanged and gives the same numbers."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (the torch extra)")
    nn = torch.nn
    torch.manual_seed(0)
    s = SMALL
    layer = nn.TransformerEncoderLayer(s["d_model"], s["heads"], s["d_ff"], dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, num_layers=s["n_layers"], enable_nested_tensor=False).eval()
    weights = {k: v.detach().numpy() for k, v in encoder.state_dict().items()}   # as saved: no "encoder." prefix
    x = np.random.default_rng(1).standard_normal((2, 7, s["d_model"])).astype(np.float32)
    with torch.no_grad():
        want = encoder(torch.from_numpy(x)).numpy()
    for step in ("encoder_by_hand", "encoder_builtin"):
        model, _, _ = compile_text(_shrunk(SPECS / "tutorial" / f"{step}.yaml"), weights=weights)
        np.testing.assert_allclose(ort_run(model, {"src": x})["memory"], want, rtol=1e-4, atol=1e-4, err_msg=step)

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(s["vocab"], s["d_embed"], padding_idx=0)
            self.lstm = nn.LSTM(s["d_embed"], s["hidden"], num_layers=s["n_layers"], bidirectional=True,
                                batch_first=True)
            self.tagger = nn.Linear(2 * s["hidden"], s["tags"])

        def forward(self, tokens, lengths):
            from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
            packed = pack_padded_sequence(self.embed(tokens), lengths, batch_first=True, enforce_sorted=False)
            y, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=tokens.shape[1])
            return torch.log_softmax(self.tagger(y), -1)

    tagger = Tagger().eval()
    tokens = np.array([[5, 42, 7, 9, 0, 0], [8, 1, 3, 0, 0, 0]], dtype=np.int64)
    lengths = np.array([4, 3], dtype=np.int64)
    with torch.no_grad():
        want = tagger(torch.from_numpy(tokens), torch.from_numpy(lengths)).numpy()
    model, _, _ = compile_text(_shrunk(SPECS / "tutorial" / "lstm_tagger.yaml"),
                               weights={k: v.detach().numpy() for k, v in tagger.state_dict().items()})
    got = ort_run(model, {"tokens": tokens, "lengths": lengths})["tag_scores"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# The console-block machinery lives in tests/test_console_blocks.py (every document);
# these names stay for tests that run one document with fixtures of their own.
def _run_console(command: str) -> list[str]:
    from pathlib import Path
    from test_console_blocks import run_console
    return run_console(command, Path.cwd())


from test_console_blocks import console_blocks as _console_blocks, output_matches as _output_matches  # noqa: E402,F401
