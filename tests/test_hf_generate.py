"""Hugging Face checkpoints generating through graphc, against transformers itself.

Each model is random-initialised from a tiny config (weights N(0, 0.05^2),
norm weights 1 + N(0, 0.05^2), so nothing is an identity; GPT-2 0.15, see MODELS), saved with
save_pretrained, then taken through exactly what a user runs:

    graphc import DIR -o spec.yaml
    graphc build spec.yaml --weights DIR --kv-cache -o BUNDLE

(the spec as imported: its generation: section, its weight map). The bundle
is driven by a minimal greedy loop written here from the bundle contract
(BUNDLE.md: prompt first, then one token at a time, present caches fed back
as past), and compared with transformers' own cached forward and generate():

- decoder-only (GPT-2; LLaMA with GQA and rope): the logits of every step
  within 1e-5 of transformers' (float32) on a left-padded batch; greedy ids
  equal to generate()'s on that batch, and each row equal to the row
  decoded alone;
- encoder-decoder (BART: learned positions read from row 2; Marian: sin-then-
  cos positions; T5: the relative-position bias over the cache): greedy ids
  equal to generate()'s on a batch of right-padded sources.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

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


def _bart():
    return transformers.BartForConditionalGeneration(transformers.BartConfig(**_SEQ2SEQ))


def _marian():
    c = transformers.MarianConfig(pad_token_id=95, decoder_start_token_id=95, eos_token_id=2, scale_embedding=True,
                                  activation_function="swish", **_SEQ2SEQ)
    return transformers.MarianMTModel(c)


def _t5():
    c = transformers.T5Config(d_model=64, d_kv=16, d_ff=96, num_layers=2, num_decoder_layers=2, num_heads=4,
                              vocab_size=96, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                              decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
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

    def get(family):
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


def _greedy(dec: Decoder, config, first_ids, first_pos, first_mask, steps: int, scores: list | None = None):
    """transformers' greedy loop: argmax of the last position; a row that produced
    eos gets pad from then on; stop when every row has. [batch, <= steps].
    ``scores`` collects each step's last-position logits [batch, vocab]."""
    logits = dec.step(first_ids, first_pos, first_mask)
    pos, eos, pad = first_pos[:, -1:], _eos(config), config["pad"]
    done = np.zeros(len(first_ids), bool)
    out = []
    for _ in range(steps):
        if scores is not None:
            scores.append(logits[:, -1])
        nxt = np.where(done, pad, logits[:, -1].argmax(-1))
        out.append(nxt)
        done |= np.isin(nxt, eos)
        if done.all():
            break
        pos = pos + 1
        logits = dec.step(nxt[:, None], pos)
    return np.stack(out, 1)


def _decode_only(bundle, config, prompts, steps):
    ids, mask = _left_padded(prompts, config["pad"])
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)          # as transformers numbers a left-padded row
    return _greedy(Decoder(bundle, config, len(prompts)), config, ids, positions, mask, steps)


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


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_ids_equal_transformers_generate_left_padded(family, imported):
    model, bundle, config = imported(family)
    if family == "gpt2":
        assert config["pad"] == config["eos"] == 2          # no pad_token_id: eos, as transformers pads
    steps = 12
    ids, mask = _left_padded(PROMPTS, config["pad"])
    with torch.no_grad():
        want = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                              max_new_tokens=steps, do_sample=False).numpy()[:, ids.shape[1]:]
    got = _decode_only(bundle, config, PROMPTS, steps)
    assert len(set(want.ravel().tolist())) > 5                # real sequences, not one repeated token
    np.testing.assert_array_equal(got, want)
    for r, prompt in enumerate(PROMPTS):                     # a row's ids do not depend on the batch
        alone = _decode_only(bundle, config, [prompt], steps)[0]
        np.testing.assert_array_equal(alone, got[r, :len(alone)])
        assert (got[r, len(alone):] == config["pad"]).all()


def _encode(bundle, config, src, mask):
    enc = session(bundle / config["encoder"]["file"])
    by_role = {"source_ids": src, "source_attention_mask": mask}
    feeds = {name: by_role[role] for name, role in config["encoder"]["inputs"].items()}
    names = config["encoder"]["outputs"]
    return dict(zip(names, enc.run(names, feeds)))


@pytest.mark.parametrize("family", ["bart", "marian", "t5"])
def test_encoder_decoder_greedy_ids_equal_transformers_generate(family, imported):
    model, bundle, config = imported(family)
    # the source inputs carry the decoder's names in transformers: the bundle prefixes them
    assert config["encoder"]["inputs"] == {"encoder_input_ids": "source_ids",
                                           "encoder_attention_mask": "source_attention_mask"}
    pad, steps = config["pad"], 12
    width = max(map(len, SOURCES))
    src = np.full((len(SOURCES), width), pad, np.int64)        # right-padded, as tokenizers pad sources
    for r, s in enumerate(SOURCES):
        src[r, :len(s)] = s
    mask = (np.arange(width)[None] < np.array([len(s) for s in SOURCES])[:, None]).astype(np.int64)
    with torch.no_grad():
        # forced_eos_token_id (BART, Marian) forces eos at max_length; graphc generate does not
        want = model.generate(input_ids=torch.from_numpy(src), attention_mask=torch.from_numpy(mask),
                              max_new_tokens=steps, do_sample=False, num_beams=1,
                              forced_eos_token_id=None).numpy()[:, 1:]
    batch = len(SOURCES)
    dec = Decoder(bundle, config, batch, _encode(bundle, config, src, mask))
    start = np.full((batch, 1), config["decoder_start"], np.int64)
    assert config["decoder_start"] == model.generation_config.decoder_start_token_id
    scores = []
    got = _greedy(dec, config, start, np.zeros((batch, 1), np.int64), None, steps, scores)
    assert len(set(want.ravel().tolist())) >= 3
    np.testing.assert_array_equal(got, want)
    # each step's logits against transformers' forward over the whole decoded prefix
    prefix = np.concatenate([start, got[:, :-1]], 1)
    with torch.no_grad():
        full = model(input_ids=torch.from_numpy(src), attention_mask=torch.from_numpy(mask),
                     decoder_input_ids=torch.from_numpy(prefix)).logits.numpy()
    assert full.std() > 0.1
    worst = float(np.abs(np.stack(scores, 1) - full).max())
    assert worst <= TOL, f"{family}: max abs diff {worst:.2e}"
