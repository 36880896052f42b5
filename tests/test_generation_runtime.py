"""graphc's run side (bundle loading, ORT step model, `graphc generate`, graphc.generate) on a
hand-written one-layer toy bundle (tests/generation_toy.py), whose numpy reference recomputes
the whole sequence at every step with no cache: the oracle for the cached logits and ids."""
from __future__ import annotations

import json

import numpy as np
import pytest

import graphc
from graphc.generation.api import Generator
from graphc.generation.search import beam_search, greedy_or_sample

import generation_toy as toy
from helpers import cli, user_error

PROMPTS = np.array([[0, 0, 3, 4, 5], [6, 7, 8, 9, 10], [0, 0, 0, 0, 11], [0, 12, 13, 14, 15]])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return toy.write_bundle(tmp_path_factory.mktemp("toy") / "bundle")


def _mask(ids):
    return (np.cumsum(ids != toy.PAD, 1) > 0).astype(np.int64)


def test_cached_logits_equal_full_forward_every_step(bundle):
    g = Generator(bundle)
    w = toy.toy_weights()
    ids, mask = PROMPTS, _mask(PROMPTS)
    got = [g.decoder.start(ids, mask, 6)]
    rng = np.random.default_rng(0)
    for _ in range(6):
        tok = rng.integers(1, toy.V, size=len(ids))
        ids = np.concatenate([ids, tok[:, None]], 1)
        mask = np.concatenate([mask, np.ones((len(tok), 1), np.int64)], 1)
        got.append(g.decoder.step(tok))
    ref = toy.reference_logits(w, ids, mask)
    for i, logits in enumerate(got):
        np.testing.assert_allclose(logits, ref[:, PROMPTS.shape[1] - 1 + i], atol=1e-5, rtol=0)


def test_greedy_and_beam_ids_equal_the_reference(bundle):
    g = Generator(bundle)
    ref_model = toy.ReferenceStepModel(toy.toy_weights())
    mask = _mask(PROMPTS)
    want = greedy_or_sample(ref_model, PROMPTS, mask, max_new_tokens=12, eos=(toy.EOS,), pad=toy.PAD)
    np.testing.assert_array_equal(g.generate(PROMPTS, max_new_tokens=12), want)
    assert (want == toy.EOS).any()                 # some row stopped early
    for nb, lp, es in [(3, 1.0, False), (4, 0.7, True), (2, 1.5, "never")]:
        want = beam_search(ref_model, PROMPTS, mask, max_new_tokens=12, eos=(toy.EOS,), pad=toy.PAD,
                           num_beams=nb, length_penalty=lp, early_stopping=es)
        got = g.generate(PROMPTS, max_new_tokens=12, num_beams=nb, length_penalty=lp, early_stopping=es)
        np.testing.assert_array_equal(got, want)


def test_each_row_is_independent_of_the_rest_of_the_batch(bundle):
    g = Generator(bundle)
    batch = g.generate(PROMPTS, max_new_tokens=10)
    for i, row in enumerate(PROMPTS):
        alone = g.generate(row[row != toy.PAD], max_new_tokens=10)[0]
        np.testing.assert_array_equal(batch[i, :len(alone)], alone)
        assert (batch[i, len(alone):] == toy.PAD).all()


def test_sampling_is_reproducible_and_stays_in_top_k(bundle):
    a = graphc.generate(bundle, PROMPTS, max_new_tokens=8, temperature=0.9, top_k=3, seed=7)
    b = graphc.generate(bundle, PROMPTS, max_new_tokens=8, temperature=0.9, top_k=3, seed=7)
    np.testing.assert_array_equal(a, b)
    # every sampled token is among the 3 best at its step (the reference's logits)
    w = toy.toy_weights()
    for i, row in enumerate(PROMPTS):
        ids = row[None, row != toy.PAD]
        for tok in a[i]:
            if tok == toy.PAD and (a[i] == toy.EOS).any():
                break
            scores = toy.reference_logits(w, ids, np.ones_like(ids))[0, -1]
            assert tok in np.argsort(-scores)[:3]
            ids = np.concatenate([ids, [[tok]]], 1)


def test_cli_prints_and_writes_ids(bundle, tmp_path):
    want = graphc.generate(bundle, [3, 4, 5], max_new_tokens=6)
    rc, out, err = cli("generate", bundle, "--input-ids", "3,4,5", "--max-new-tokens", "6")
    assert rc == 0, err
    assert out.strip() == ",".join(map(str, want[0]))
    np.save(tmp_path / "p.npy", PROMPTS)
    rc, out, err = cli("generate", bundle, "--input-ids", tmp_path / "p.npy", "--num-beams", "2",
                       "-o", tmp_path / "ids.json")
    assert rc == 0, err
    want = graphc.generate(bundle, PROMPTS, num_beams=2)
    assert json.loads((tmp_path / "ids.json").read_text()) == want.tolist()
    rc, _, err = cli("generate", bundle, "--input-ids", tmp_path / "p.npy", "-o", tmp_path / "ids.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), graphc.generate(bundle, PROMPTS))


@pytest.mark.parametrize("args,message", [
    (["--input-ids", "3,4,99"], "outside the vocabulary [0, 20)"),
    (["--input-ids", "3,x"], "comma-separated integer ids"),
    (["--input-ids", "3", "--max-new-tokens", "65"], "longer than the model's 64 positions"),
    (["--input-ids", ",".join(["3"] * 65)], "positions go up to 64"),
    (["--input-ids", "0,0"], "all padding"),
    (["--src-ids", "3"], "decoder-only model"),
    (["--input-ids", "3", "--num-beams", "2", "--temperature", "0.5"], "cannot be combined with --num-beams"),
    (["--input-ids", "3", "--length-penalty", "2"], "only apply to beam search"),
    (["--input-ids", "3", "--seed", "1"], "--seed only applies to sampling"),
    (["--input-ids", "3", "--temperature", "0"], "--temperature must be a positive number"),
    (["--input-ids", "3", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--input-ids", "3", "--max-new-tokens", "0"], "--max-new-tokens must be between 1"),
    (["--input-ids", "3", "--text", "hi"], "--text needs --tokenizer"),
])
def test_cli_bad_input_is_exit_2_and_writes_nothing(bundle, tmp_path, args, message):
    out = tmp_path / "ids.npy"
    result = cli("generate", bundle, *args, "-o", out)
    user_error(result, message)
    assert not out.exists() and result[1] == ""


def test_not_a_bundle(tmp_path, bundle):
    user_error(cli("generate", tmp_path, "--input-ids", "3"), ("not a generation bundle", "--kv-cache"))
    user_error(cli("generate", bundle / "decoder.onnx", "--input-ids", "3"), "plain .onnx model")


@pytest.mark.parametrize("text,message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    (json.dumps(toy.config(format=2)), "unsupported format"),
    (json.dumps(toy.config(decoder={"file": "../decoder.onnx"})), "inside the bundle directory"),
    (json.dumps(toy.config(decoder={"file": "missing.onnx"})), "not in"),
    (json.dumps(toy.config(eos=25)), "'eos' = 25 is outside"),
    (json.dumps(toy.config(pad="0")), "'pad' must be an integer"),
    (json.dumps(toy.config(cache=[])), "'cache' must be a non-empty list"),
    (json.dumps(toy.config(architecture="rnn")), "'architecture'"),
    (json.dumps(toy.config(vocab_size=30)), "scores 20 tokens but"),
    (json.dumps(toy.config(cache=[{"past_key": "a", "past_value": "b", "present_key": "c",
                                   "present_value": "d", "kv_heads": 1, "head_dim": 8}])), "does not match"),
])
def test_malformed_config_is_a_clear_error(tmp_path, text, message):
    d = toy.write_bundle(tmp_path / "b")
    (d / "graphc_generation.json").write_text(text)
    user_error(cli("generate", d, "--input-ids", "3"), message)


def test_text_in_and_out_with_a_tokenizer(bundle, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    vocab = {f"w{i}": i for i in range(toy.V)}
    tok = tokenizers.Tokenizer(WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    rc, out, err = cli("generate", bundle, "--tokenizer", tmp_path / "tokenizer.json", "--text", "w3 w4 w5",
                       "--text", "w11", "--max-new-tokens", "5")
    assert rc == 0, err
    want = graphc.generate(bundle, [[3, 4, 5], [toy.PAD, toy.PAD, 11]], max_new_tokens=5)   # left-padded
    lines = out.strip().split("\n")
    for line, row in zip(lines, want):
        ids, text = line.split("\t")
        assert ids == ",".join(map(str, row))
        words = []
        for t in row:
            if t == toy.EOS:
                break
            words.append(f"w{t}")
        assert text == " ".join(words)
