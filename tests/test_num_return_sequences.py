"""num_return_sequences: several sequences per input row, against transformers' generate().

Tiny random checkpoints (built as in test_hf_generate: save_pretrained, graphc
import, graphc build --kv-cache), decoded by graphc and by transformers:

- beam search: every returned hypothesis (the R best of each row, best first,
  rows grouped by input row) has ids equal to transformers' on a left-padded
  GPT-2 batch and a right-padded BART batch, with length_penalty != 1 and each
  early_stopping mode, where hypotheses end at eos at different lengths;
- sampling: graphc's RNG is numpy's, not torch's, so ids cannot match; the
  shape and grouping match transformers', the draws of each group follow that
  row's warped distribution from transformers' logits (first token and, given
  it, the second: the copied caches are right), and a seed repeats them;
- greedy with R > 1, R < 1, R > num_beams: clean user errors (transformers
  raises ValueError for the first and last).
"""
from __future__ import annotations

import re

import json

import numpy as np
import pytest

import graphc
from helpers import cli, user_error
from test_hf_generate import _eos, _hf_generate, _init, _left_padded, _sources, MODELS

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

PROMPTS = [[1, 17, 40, 8, 93, 25, 61], [1, 60, 4], [1, 33, 71, 12, 9]]


def _gpt2_eos93():
    """GPT-2 whose eos (93) this random model emits at varying steps (a pad id of its
    own, 0), so beam hypotheses end at different lengths and length_penalty ranks them."""
    c = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=96, n_positions=64,
                                bos_token_id=1, eos_token_id=93, pad_token_id=0)
    return transformers.GPT2LMHeadModel(c)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = {}

    def get(family):
        if family not in cache:
            tmp = tmp_path_factory.mktemp(family)
            torch.manual_seed(0)
            model = _init(_gpt2_eos93(), 0.15) if family == "gpt2" else _init(MODELS[family][0](), MODELS[family][1])
            model.save_pretrained(tmp / "ckpt")
            rc, _, err = cli("import", tmp / "ckpt", "-o", tmp / "spec.yaml")
            assert rc == 0, err
            rc, _, err = cli("build", tmp / "spec.yaml", "--weights", tmp / "ckpt", "--kv-cache", "-o", tmp / "bundle")
            assert rc == 0, err
            cache[family] = model, tmp / "bundle", json.loads((tmp / "bundle" / "graphc_generation.json").read_text())
        return cache[family]
    return get


def _pad_after_eos(want, config):
    """transformers' beam search fills after eos with `pad_token_id or eos` (eos when pad is 0); graphc with pad."""
    eos = _eos(config)
    ended = np.cumsum(np.isin(want, eos), 1) - np.isin(want, eos) > 0
    return np.where(ended, config["pad"], want), ended


@pytest.mark.parametrize("beams, R, length_penalty, early_stopping",
                         [(4, 4, 0.6, True), (5, 3, 0.8, False), (4, 3, -0.5, "never"), (4, 2, 2.0, "never")])
def test_gpt2_beam_sequences_equal_transformers_left_padded(beams, R, length_penalty, early_stopping, built):
    model, bundle, config = built("gpt2")
    assert config["pad"] == 0 and config["eos"] == 93
    ids, mask = _left_padded(PROMPTS, config["pad"])
    kw = dict(num_beams=beams, num_return_sequences=R, length_penalty=length_penalty, early_stopping=early_stopping)
    with torch.no_grad():
        want = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                              max_new_tokens=10, do_sample=False, **kw).numpy()[:, ids.shape[1]:]
    want, ended = _pad_after_eos(want, config)
    got = graphc.generate(bundle, input_ids=ids, max_new_tokens=10, **kw)
    assert got.shape == want.shape == (len(PROMPTS) * R, want.shape[1])
    if length_penalty < 1:      # short finished hypotheses outrank running ones; with 2.0 the long ones win
        assert ended.any() and not ended.all(axis=1).all()
    np.testing.assert_array_equal(got, want)
    assert len({tuple(r) for r in got[:R].tolist()}) == R  # R distinct hypotheses of row 0


@pytest.mark.parametrize("beams, R, length_penalty, early_stopping", [(4, 4, 0.6, True), (3, 2, 1.0, False)])
def test_bart_beam_sequences_equal_transformers(beams, R, length_penalty, early_stopping, built):
    model, bundle, config = built("bart")
    src, _ = _sources(config["pad"])
    mask = (src != config["pad"]).astype(np.int64)
    kw = dict(num_beams=beams, num_return_sequences=R, length_penalty=length_penalty, early_stopping=early_stopping)
    want, ended = _pad_after_eos(_hf_generate(model, src, mask, 10, **kw), config)
    got = graphc.generate(bundle, src_ids=src, max_new_tokens=10, **kw)
    assert ended.any()
    assert got.shape == (len(src) * R, want.shape[1])
    np.testing.assert_array_equal(got, want)
    # the Generator (a second call on one set of sessions) returns the same
    gen = graphc.Generator(bundle)
    np.testing.assert_array_equal(gen.generate(src_ids=src, max_new_tokens=10, **kw), got)


def _next_probs(model, ids, mask, temperature, top_k):
    """The last position's warped probabilities, positions counted from each row's first real token
    (as generate() derives them from the attention mask)."""
    t = torch.from_numpy
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        logits = model(input_ids=t(ids), attention_mask=t(mask), position_ids=t(pos)).logits[:, -1]
    return _warped_probs(logits, temperature, top_k)


def _warped_probs(logits, temperature, top_k):
    """transformers' temperature then top-k warpers, softmax: torch, from transformers' logits."""
    x = logits / temperature
    kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
    return torch.softmax(x.masked_fill(x < kth, -float("inf")), dim=-1).numpy()


def test_sampled_sequences_follow_each_rows_distribution(built):
    """R draws per row: the shape transformers returns, and each group's first and
    second tokens distributed as that row's (torch) probabilities say."""
    model, bundle, config = built("gpt2")
    prompts = [PROMPTS[0], PROMPTS[1]]
    ids, mask = _left_padded(prompts, config["pad"])
    R, T, K = 1000, 1.3, 6
    samp = dict(do_sample=True, temperature=T, top_k=K, num_return_sequences=R)
    t = torch.from_numpy
    with torch.no_grad():
        hf = model.generate(input_ids=t(ids), attention_mask=t(mask), max_new_tokens=2, **samp)
    first = _next_probs(model, ids, mask, T, K)                                                   # [2, V]
    got = graphc.generate(bundle, input_ids=ids, max_new_tokens=2, temperature=T, top_k=K,
                          num_return_sequences=R, seed=7)
    assert got.shape[0] == hf.shape[0] == len(prompts) * R and got.shape[1] == 2
    assert np.abs(first[0] - first[1]).max() > 0.2          # > 3x the bound below: a grouping mix-up fails
    V = first.shape[1]
    for r in range(len(prompts)):
        group = got[r * R:(r + 1) * R]
        freq = np.bincount(group[:, 0], minlength=V) / R
        # 1000 draws: a frequency's standard error is at most 0.016; 0.065 is about 4 of them
        assert np.abs(freq - first[r]).max() < 0.065, (r, np.abs(freq - first[r]).max())
        assert (freq[first[r] == 0] == 0).all()              # nothing outside the top-k
        # second token given the most drawn first one: transformers' next-token probabilities
        x = int(np.argmax(freq))
        rows = group[group[:, 0] == x]
        assert x not in _eos(config)                         # a second token follows it
        ext = np.concatenate([ids[r:r + 1], [[x]]], 1)
        ext_mask = np.concatenate([mask[r:r + 1], [[1]]], 1)
        second = _next_probs(model, ext, ext_mask, T, K)[0]
        freq2 = np.bincount(rows[:, 1], minlength=V) / len(rows)
        bound = 4 * 0.5 / np.sqrt(len(rows))
        assert len(rows) > 200 and np.abs(freq2 - second).max() < bound, (r, np.abs(freq2 - second).max(), bound)


def test_sampled_sequences_repeat_with_a_seed(built):
    model, bundle, config = built("gpt2")
    ids, _ = _left_padded(PROMPTS, config["pad"])
    kw = dict(max_new_tokens=8, temperature=1.0, top_p=0.9, num_return_sequences=4)
    a = graphc.generate(bundle, input_ids=ids, seed=3, **kw)
    assert a.shape == (len(PROMPTS) * 4, 8)
    np.testing.assert_array_equal(graphc.Generator(bundle).generate(ids, seed=3, **kw), a)
    assert not np.array_equal(graphc.generate(bundle, input_ids=ids, seed=4, **kw), a)
    for r in range(len(PROMPTS)):                  # independent draws, not one row copied
        assert len({tuple(row) for row in a[r * 4:(r + 1) * 4].tolist()}) > 1


def test_cli_writes_the_grouped_rows(built, tmp_path):
    _, bundle, config = built("gpt2")
    ids, _ = _left_padded(PROMPTS, config["pad"])
    np.save(tmp_path / "ids.npy", ids)
    rc, out, err = cli("generate", bundle, "--input-ids", tmp_path / "ids.npy", "--max-new-tokens", "6",
                       "--num-beams", "3", "--num-return-sequences", "2", "-o", tmp_path / "out.npy")
    assert rc == 0, err
    want = graphc.generate(bundle, input_ids=ids, max_new_tokens=6, num_beams=3, num_return_sequences=2)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), want)
    assert out.splitlines() == [",".join(map(str, row)) for row in want.tolist()]


@pytest.mark.parametrize("args, message", [
    (dict(num_return_sequences=2), "--num-return-sequences 2 needs sampling or beam search"),
    (dict(num_return_sequences=0), "--num-return-sequences must be between 1 and 1024, got 0"),
    (dict(num_return_sequences=-3, temperature=1.0), "--num-return-sequences must be between 1 and 1024, got -3"),
    (dict(num_return_sequences=5, num_beams=4), "--num-return-sequences 5 is more than --num-beams 4"),
    (dict(num_return_sequences=2.0, num_beams=4), "--num-return-sequences must be an integer"),
])
def test_bad_num_return_sequences_are_user_errors(args, message, built, tmp_path):
    _, bundle, _ = built("gpt2")
    # from Python the message names the arguments: --num-beams 4 -> num_beams=4
    python_message = re.sub(r"--([a-z-]+)(?: (\d+))?",
                            lambda m: m.group(1).replace("-", "_") + (f"={m.group(2)}" if m.group(2) else ""), message)
    user_error(lambda: graphc.generate(bundle, input_ids=[[1, 5, 9]], max_new_tokens=3, **args), python_message)
    if isinstance(args["num_return_sequences"], int):
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in args.items()]
        out = tmp_path / "ids.npy"
        user_error(cli("generate", bundle, "--input-ids", "1,5,9", "--max-new-tokens", "3", *flags, "-o", out),
                   message)
        assert not out.exists()


def test_transformers_refuses_the_same(built):
    """The oracle for the errors above: transformers' generate() raises for greedy R > 1 and R > num_beams."""
    model, _, _ = built("gpt2")
    ids = torch.tensor([[1, 5, 9]])
    with pytest.raises(ValueError, match="num_return_sequences"):
        model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, num_return_sequences=2)
    with pytest.raises(ValueError, match="num_return_sequences"):
        model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, num_beams=4, num_return_sequences=5)
