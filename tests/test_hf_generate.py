"""Hugging Face checkpoints generating through graphc, against transformers itself.

Each model is random-initialised from a tiny config (weights N(0, 0.05^2),
norm weights 1 + N(0, 0.05^2), so nothing is an identity; GPT-2 0.15, see MODELS), saved with
save_pretrained, then taken through exactly what a user runs:

    graphc import DIR -o spec.yaml
    graphc build spec.yaml --weights DIR --kv-cache -o BUNDLE

(the spec as imported: its generation: section, its weight map). The bundle
is decoded by graphc.generate and, step by step, by feeding its decoder from
the bundle contract (prompt first, then one token at a time, present caches
fed back as past); both are compared with transformers' own cached forward
and generate():

- decoder-only (GPT-2; LLaMA with GQA and rope): the logits of every step
  within 1e-5 of transformers' (float32) on a left-padded batch; greedy ids
  equal to generate()'s on that batch, and each row equal to the row
  decoded alone;
- encoder-decoder (BART: learned positions read from row 2; Marian: sin-then-
  cos positions; T5: the relative-position bias over the cache): greedy ids
  equal to generate()'s on a batch of right-padded sources, each step's
  logits within 1e-5 of transformers' forward, and beam search (3-4 beams,
  length_penalty != 1, early_stopping) equal to transformers' beam search.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import graphc

from helpers import cli
from kv_helpers import Decoder, session

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

TOL = 1e-5
STD = 0.05
PROMPTS = [[1, 17, 40, 8, 93, 25, 61], [1, 60, 4], [1, 33, 71, 12, 9]]
SOURCES = [[5, 9, 14, 3, 22, 7, 31, 8, 2], [17, 4, 40, 6, 2], [12, 33, 2]]


def _init(model, std: float = STD):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:         # Marian's fixed sinusoid tables
                continue
            norm = "norm" in name.lower() or re.search(r"(^|\.)ln_", name)      # GPT-2: ln_1, ln_2, ln_f
            base = 1.0 if norm and name.endswith("weight") else 0.0
            p.copy_(base + std * torch.randn(p.shape, generator=g))
    return model.eval()


def _gpt2():
    c = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=96, n_positions=64,
                                bos_token_id=1, eos_token_id=2)             # no pad id: pad = eos
    return transformers.GPT2LMHeadModel(c)


def _llama():
    c = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                 rms_norm_eps=1e-6, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
                                 eos_token_id=2)
    return transformers.LlamaForCausalLM(c)


_SEQ2SEQ = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                encoder_ffn_dim=96, decoder_ffn_dim=96, vocab_size=96, max_position_embeddings=64)


# eos ids these random models produce now and then, so rows (and beams) end at different lengths
def _bart():
    return transformers.BartForConditionalGeneration(transformers.BartConfig(eos_token_id=6, **_SEQ2SEQ))


def _marian():
    c = transformers.MarianConfig(pad_token_id=95, decoder_start_token_id=95, eos_token_id=29, scale_embedding=True,
                                  activation_function="swish", **_SEQ2SEQ)
    return transformers.MarianMTModel(c)


def _t5():
    c = transformers.T5Config(d_model=64, d_kv=16, d_ff=96, num_layers=2, num_decoder_layers=2, num_heads=4,
                              vocab_size=96, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                              decoder_start_token_id=0, pad_token_id=0, eos_token_id=93)
    return transformers.T5ForConditionalGeneration(c)


# family -> (model, weight std). With a head tied to the embedding (GPT-2, BART, Marian, T5), weights
# of 0.05 make greedy decoding repeat one token (or the start token, BART's eos) forever: the
# embedding dominates the residual stream. At these scales the ids vary.
MODELS = {"gpt2": (_gpt2, 0.15), "llama": (_llama, STD), "bart": (_bart, 0.15), "marian": (_marian, 0.2),
          "t5": (_t5, 0.15)}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """family -> (the transformers model, the bundle directory, its graphc_generation.json), built once."""
    cache = {}

    def get(family, layout="concat"):
        if layout != "concat":
            # the shared cache layout (--target ort --cache-layout shared) of the same checkpoint
            if (family, layout) not in cache:
                model, bundle, _ = get(family)
                out = bundle.parent / f"bundle_{layout}"
                rc, _, err = cli("build", bundle.parent / "spec.yaml", "--weights", bundle.parent / "ckpt",
                                 "--kv-cache", "--target", "ort", "--cache-layout", layout, "-o", out)
                assert rc == 0, err
                cache[family, layout] = model, out, json.loads((out / "graphc_generation.json").read_text())
            return cache[family, layout]
        if family not in cache:
            tmp = tmp_path_factory.mktemp(family)
            torch.manual_seed(0)
            make, std = MODELS[family]
            model = _init(make(), std)
            model.save_pretrained(tmp / "ckpt")
            rc, _, err = cli("import", tmp / "ckpt", "-o", tmp / "spec.yaml")
            assert rc == 0, err
            rc, _, err = cli("build", tmp / "spec.yaml", "--weights", tmp / "ckpt", "--kv-cache", "-o", tmp / "bundle")
            assert rc == 0, err
            config = json.loads((tmp / "bundle" / "graphc_generation.json").read_text())
            cache[family] = model, tmp / "bundle", config
        return cache[family]
    return get


def _eos(config) -> list[int]:
    eos = config["eos"]
    return [] if eos is None else eos if isinstance(eos, list) else [eos]


def _left_padded(prompts, pad):
    width = max(map(len, prompts))
    ids = np.full((len(prompts), width), pad, np.int64)
    mask = np.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):], mask[r, width - len(p):] = p, 1
    return ids, mask


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_step_logits_equal_transformers_left_padded(family, imported):
    """Prompt step, then 6 one-token steps: every real position's logits against
    transformers' forward with its own cache, mask and positions."""
    model, bundle, config = imported(family)
    ids, mask = _left_padded(PROMPTS, config["pad"])
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    dec = Decoder(bundle, config, len(PROMPTS))
    got = dec.step(ids, positions, mask)
    t = torch.from_numpy
    with torch.no_grad():
        out = model(input_ids=t(ids), attention_mask=t(mask), position_ids=t(positions), use_cache=True)
    real = mask.astype(bool)
    want = out.logits.numpy()
    assert want[real].std() > 0.1                     # logits of a real spread: 1e-5 means something
    worst = float(np.abs(got[real] - want[real]).max())
    rng = np.random.default_rng(0)
    pos, past = positions[:, -1:], out.past_key_values
    for _ in range(6):
        new = rng.integers(3, 96, (len(PROMPTS), 1))
        pos = pos + 1
        mask = np.concatenate([mask, np.ones_like(new)], 1)
        got = dec.step(new, pos)
        with torch.no_grad():
            out = model(input_ids=t(new), attention_mask=t(mask), position_ids=t(pos), past_key_values=past,
                        use_cache=True)
        past = out.past_key_values
        worst = max(worst, float(np.abs(got - out.logits.numpy()).max()))
    assert worst <= TOL, f"{family}: max abs diff {worst:.2e}"


@pytest.mark.parametrize("family, layout", [("gpt2", "concat"), ("llama", "concat"), ("gpt2", "shared"),
                                            ("llama", "shared")])
def test_greedy_ids_equal_transformers_generate_left_padded(family, layout, imported):
    model, bundle, config = imported(family, layout)
    if family == "gpt2":
        assert config["pad"] == config["eos"] == 2          # no pad_token_id: eos, as transformers pads
    steps = 12
    ids, mask = _left_padded(PROMPTS, config["pad"])
    with torch.no_grad():
        want = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                              max_new_tokens=steps, do_sample=False).numpy()[:, ids.shape[1]:]
    got = graphc.generate(bundle, input_ids=ids, max_new_tokens=steps)     # left-padded with the bundle's pad
    assert len(set(want.ravel().tolist())) > 5                # real sequences, not one repeated token
    np.testing.assert_array_equal(got, want)
    for r, prompt in enumerate(PROMPTS):                     # a row's ids do not depend on the batch
        alone = graphc.generate(bundle, input_ids=[prompt], max_new_tokens=steps)[0]
        np.testing.assert_array_equal(alone, got[r, :len(alone)])
        assert (got[r, len(alone):] == config["pad"]).all()


def _encode(bundle, config, src, mask):
    enc = session(bundle / config["encoder"]["file"])
    by_role = {"source_ids": src, "source_attention_mask": mask}
    feeds = {name: by_role[role] for name, role in config["encoder"]["inputs"].items()}
    names = config["encoder"]["outputs"]
    return dict(zip(names, enc.run(names, feeds)))


def _sources(pad):
    """SOURCES right-padded with pad (as tokenizers pad sources), and their attention_mask."""
    width = max(map(len, SOURCES))
    src = np.full((len(SOURCES), width), pad, np.int64)
    for r, s in enumerate(SOURCES):
        src[r, :len(s)] = s
    return src, (np.arange(width)[None] < np.array([len(s) for s in SOURCES])[:, None]).astype(np.int64)


def _hf_generate(model, src, mask, steps, **kw):
    t = torch.from_numpy
    with torch.no_grad():
        # forced_eos_token_id (BART, Marian) forces eos at max_length; graphc generate does not
        out = model.generate(input_ids=t(src), attention_mask=t(mask), max_new_tokens=steps,
                             forced_eos_token_id=None, do_sample=False, **kw)
    return out.numpy()[:, 1:]                                       # without decoder_start


@pytest.mark.parametrize("family", ["bart", "marian", "t5"])
def test_encoder_decoder_greedy_ids_equal_transformers_generate(family, imported):
    model, bundle, config = imported(family)
    # the source inputs carry the decoder's names in transformers: the bundle prefixes them
    assert config["encoder"]["inputs"] == {"encoder_input_ids": "source_ids",
                                           "encoder_attention_mask": "source_attention_mask"}
    assert config["decoder_start"] == model.generation_config.decoder_start_token_id
    src, mask = _sources(config["pad"])
    want = _hf_generate(model, src, mask, 12, num_beams=1)
    got = graphc.generate(bundle, src_ids=src, max_new_tokens=12)
    assert len(set(want.ravel().tolist())) >= 3
    np.testing.assert_array_equal(got, want)
    # each step's logits (the encoder once, the decoder one token at a time) against
    # transformers' forward over the whole decoded prefix
    batch = len(SOURCES)
    prefix = np.concatenate([np.full((batch, 1), config["decoder_start"]), got[:, :-1]], 1)
    dec = Decoder(bundle, config, batch, _encode(bundle, config, src, mask))
    steps = np.concatenate([dec.step(prefix[:, t:t + 1], np.full((batch, 1), t)) for t in range(prefix.shape[1])], 1)
    with torch.no_grad():
        full = model(input_ids=torch.from_numpy(src), attention_mask=torch.from_numpy(mask),
                     decoder_input_ids=torch.from_numpy(prefix)).logits.numpy()
    assert full.std() > 0.1
    worst = float(np.abs(steps - full).max())
    assert worst <= TOL, f"{family}: max abs diff {worst:.2e}"


@pytest.mark.parametrize("family, beams, length_penalty, layout",
                         [("bart", 4, 0.6, "concat"), ("marian", 3, 1.5, "concat"), ("t5", 4, 2.0, "concat"),
                          ("bart", 4, 0.6, "shared"), ("marian", 3, 1.5, "shared")])
def test_encoder_decoder_beam_search_equals_transformers(family, beams, length_penalty, layout, imported):
    model, bundle, config = imported(family, layout)
    src, _ = _sources(config["pad"])
    mask = (src != config["pad"]).astype(np.int64)
    want = _hf_generate(model, src, mask, 10, num_beams=beams, length_penalty=length_penalty, early_stopping=True)
    got = graphc.generate(bundle, src_ids=src, max_new_tokens=10, num_beams=beams, length_penalty=length_penalty,
                          early_stopping=True)
    # transformers' beam search fills after eos with `pad_token_id or eos`: eos when pad is 0 (T5)
    ended = np.cumsum(np.isin(want, _eos(config)), 1) - np.isin(want, _eos(config)) > 0
    want = np.where(ended, config["pad"], want)
    assert ended.any()             # hypotheses end at eos at different lengths: length_penalty decides
    np.testing.assert_array_equal(got, want)


def test_ids_outside_the_vocabulary_leave_the_section_out(tmp_path):
    """A tiny config left with GPT-2's default ids (50256) over a 96-token vocabulary:
    no section (a plain build checks it, so a wrong one would refuse the spec), a
    comment saying why, and the spec still checks."""
    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=96, n_positions=32)
    config.architectures = ["GPT2LMHeadModel"]
    config.save_pretrained(tmp_path / "cfg")
    rc, out, err = cli("import", tmp_path / "cfg")
    assert rc == 0, err
    assert "\ngeneration:" not in out
    assert "# no generation: section (graphc build --kv-cache needs one): token id(s) 50256 lie outside the " \
           "vocabulary of 96." in out
    (tmp_path / "s.yaml").write_text(out)
    assert cli("check", tmp_path / "s.yaml")[0] == 0
