"""End to end: Hugging Face models with random weights (small configs, no downloads), their
state_dict renamed to graphc's parameter names, compiled with `graphc build --kv-cache`,
decoded by `graphc generate` and `graphc.generate`; the ids must equal transformers'
generate() token for token:
- GPT-2-like (learned positions, LayerNorm, gelu_tanh) and LLaMA-like (RoPE half-split,
  GQA, RMSNorm, SwiGLU): greedy, left-padded batches of prompts of different lengths;
- a Marian-like encoder-decoder (post-norm nn.Transformer layout, scaled embeddings, HF's
  sinusoidal position table loaded into learned_pe): greedy and beam search."""
from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import graphc  # noqa: E402
from helpers import ROOT, cli  # noqa: E402

sys.path.insert(0, str(ROOT / "tools"))
from gen_models import (GPT_SPEC, LLAMA_SPEC, LLAMA_TINY, MARIAN_SPEC, MARIAN_TINY, gpt2_weights,  # noqa: E402
                        hf_llama, hf_marian, llama_weights, marian_model, marian_weights, randomize as _randomize)

BOS, EOS, PAD = 1, 2, 0

def _bundle(tmp_path, spec_text, weights, name):
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(spec_text)
    np.savez(tmp_path / f"{name}.npz", **weights)
    out = tmp_path / f"{name}_bundle"
    rc, _, err = cli("build", spec, "--weights", tmp_path / f"{name}.npz", "--kv-cache", "-o", out)
    assert rc == 0, err
    return out


def _left_padded(rows):
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), PAD, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
    return ids


PROMPTS = [[5, 9, 13, 7, 21, 40, 33], [11, 4], [30, 31, 3 + 60, 17], [8]]


def _hf_greedy(model, ids, eos, new):
    cfg = transformers.GenerationConfig(do_sample=False, max_new_tokens=new, eos_token_id=eos, pad_token_id=PAD,
                                        bos_token_id=BOS)
    with torch.no_grad():
        out = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy((ids != PAD).astype(np.int64)),
                             generation_config=cfg)
    return out.numpy()[:, ids.shape[1]:]


def _check_decoder_only(tmp_path, model, spec, weights, eos, name):
    bundle = _bundle(tmp_path, spec, weights, name)
    ids = _left_padded(PROMPTS)
    want = _hf_greedy(model, ids, eos, 24)
    got = graphc.generate(bundle, ids, max_new_tokens=24)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 8                     # not a collapsed, repeated-token model
    np.save(tmp_path / "prompts.npy", ids)
    rc, out, err = cli("generate", bundle, "--input-ids", tmp_path / "prompts.npy", "--max-new-tokens", "24")
    assert rc == 0, err
    assert out.split() == [",".join(map(str, r)) for r in want]
    for i, row in enumerate(PROMPTS):                   # each row alone: the same ids as in the batch
        alone = graphc.generate(bundle, row, max_new_tokens=24)[0]
        np.testing.assert_array_equal(alone, want[i, :len(alone)])


def test_gpt2_like_greedy_left_padded_equals_transformers(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=96, n_positions=64, n_embd=64, n_layer=2, n_head=4, n_inner=256,
                                  activation_function="gelu_new", tie_word_embeddings=False, bos_token_id=BOS, eos_token_id=EOS,
                                  pad_token_id=PAD)
    # untied, larger norm gains: a random GPT-2 otherwise repeats one or two tokens
    model = _randomize(transformers.GPT2LMHeadModel(cfg).eval(), 0.1, norm_scale=3.0)
    _check_decoder_only(tmp_path, model, GPT_SPEC, gpt2_weights(model), EOS, "gpt")


def test_llama_like_greedy_left_padded_equals_transformers(tmp_path):
    torch.manual_seed(0)
    cfg = hf_llama(**LLAMA_TINY)
    model = _randomize(transformers.LlamaForCausalLM(cfg).eval(), 0.2)
    _check_decoder_only(tmp_path, model, LLAMA_SPEC, llama_weights(model), [2, 3], "llama")


def _marian():
    torch.manual_seed(0)
    # untied head, larger norm gains: not one repeated token; an eos bias: hypotheses end at different lengths
    return marian_model(hf_marian(**MARIAN_TINY), 0.1, norm_scale=3.0, eos_bias=1.5)


SOURCES = [[5, 9, 13, 7, 21, 2], [11, 4, 2, 1, 1, 1], [30, 31, 6, 17, 2, 1]]     # right-padded with 1


@pytest.mark.parametrize("case", [dict(num_beams=1), dict(num_beams=3, length_penalty=1.0, early_stopping=False),
                                  dict(num_beams=4, length_penalty=0.6, early_stopping=True)],
                         ids=["greedy", "beam3", "beam4-early"])
def test_marian_like_greedy_and_beam_equal_transformers(tmp_path, case):
    model = _marian()
    bundle = _bundle(tmp_path, MARIAN_SPEC, marian_weights(model), "marian")
    src = np.array(SOURCES, np.int64)
    gen = transformers.GenerationConfig(bos_token_id=3, eos_token_id=EOS, pad_token_id=1, decoder_start_token_id=3,
                                        do_sample=False, max_new_tokens=16, **case)
    with torch.no_grad():
        want = model.generate(input_ids=torch.from_numpy(src), attention_mask=torch.from_numpy((src != 1).astype(np.int64)),
                              generation_config=gen).numpy()[:, 1:]
    got = graphc.generate(bundle, src_ids=src, max_new_tokens=16, **case)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 5
    assert (want == EOS).any() or case.get("early_stopping") is False   # eos paths exercised (greedy, beam4)
    np.save(tmp_path / "src.npy", src)
    flags = [f"--{k.replace('_', '-')}={str(v).lower()}" for k, v in case.items()]
    rc, out, err = cli("generate", bundle, "--src-ids", tmp_path / "src.npy", "--max-new-tokens", "16", *flags)
    assert rc == 0, err
    assert out.split() == [",".join(map(str, r)) for r in want]
