"""The decoding algorithms (graphc.generation.search) against Hugging Face transformers'
generate() itself: tiny random GPT-2 and BART models run by transformers are the oracle,
and the same models (full forward at every step, no cache) are the step model graphc's
search drives. Ids must be identical, token for token. The warpers are compared with
transformers' own TemperatureLogitsWarper / TopKLogitsWarper / TopPLogitsWarper."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from graphc.generation.search import Sampling, beam_search, greedy_or_sample, warp  # noqa: E402

EOS, PAD, BOS = 2, 1, 0


def _scale(model, std):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


class _DecoderOnlyOracle:
    """A step model that recomputes the whole (left-padded) sequence with the torch model."""

    def __init__(self, model):
        self.model = model

    def _logits(self):
        pos = self.mask.cumsum(-1) - 1
        pos[self.mask == 0] = 1
        with torch.no_grad():
            out = self.model(input_ids=torch.from_numpy(self.ids), attention_mask=torch.from_numpy(self.mask),
                             position_ids=torch.from_numpy(pos))
        return out.logits[:, -1].float().numpy()

    def start(self, ids, mask):
        self.ids, self.mask = ids.copy(), mask.copy()
        return self._logits()

    def step(self, tokens):
        self.ids = np.concatenate([self.ids, tokens[:, None]], 1)
        self.mask = np.concatenate([self.mask, np.ones_like(tokens)[:, None]], 1)
        return self._logits()

    def reorder(self, index):
        self.ids, self.mask = self.ids[index], self.mask[index]


class _Seq2SeqOracle(_DecoderOnlyOracle):
    def __init__(self, model, src, src_mask):
        self.model = model
        with torch.no_grad():
            self.memory = model.get_encoder()(input_ids=torch.from_numpy(src),
                                              attention_mask=torch.from_numpy(src_mask)).last_hidden_state
        self.src_mask = torch.from_numpy(src_mask)

    def _logits(self):
        with torch.no_grad():
            out = self.model(encoder_outputs=(self.memory,), attention_mask=self.src_mask,
                             decoder_input_ids=torch.from_numpy(self.ids))
        return out.logits[:, -1].float().numpy()

    def reorder(self, index):
        super().reorder(index)
        self.memory, self.src_mask = self.memory[index], self.src_mask[index]


def _gpt2(std=0.3, vocab=40):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                  bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    return _scale(transformers.GPT2LMHeadModel(cfg).eval(), std)


def _bart(std=0.6, vocab=40, eos_bias=3.0):
    torch.manual_seed(0)
    cfg = transformers.BartConfig(vocab_size=vocab, d_model=32, encoder_layers=1, decoder_layers=2,
                                  encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                  decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=PAD, forced_eos_token_id=None,
                                  bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=EOS)
    m = _scale(transformers.BartForConditionalGeneration(cfg).eval(), std)
    m.generation_config = _gen_config(decoder_start_token_id=EOS)
    with torch.no_grad():
        m.final_logits_bias[0, EOS] = eos_bias       # hypotheses end at different lengths
    return m


def _left_padded(rows):
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), PAD, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


def _gen_config(**kw):
    return transformers.GenerationConfig(bos_token_id=BOS, eos_token_id=kw.pop("eos", EOS), pad_token_id=PAD,
                                         do_sample=False, **kw)


PROMPTS = [[5, 9, 13, 7, 21], [11, 4], [30, 31, 3], [8]]


@pytest.mark.parametrize("eos", [EOS, [EOS, 7]])
def test_greedy_left_padded_matches_transformers(eos):
    model = _gpt2()
    ids, mask = _left_padded(PROMPTS)
    with torch.no_grad():
        ref = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                             generation_config=_gen_config(max_new_tokens=12, eos=eos)).numpy()[:, ids.shape[1]:]
    eos_t = tuple(eos) if isinstance(eos, list) else (eos,)
    got = greedy_or_sample(_DecoderOnlyOracle(model), ids, mask, max_new_tokens=12, eos=eos_t, pad=PAD)
    np.testing.assert_array_equal(got, ref)


def test_greedy_rows_stop_at_eos_and_are_padded():
    # an oracle that is easy to reason about: token (last + 1) mod V, eos reached by row 0 first
    class Counter:
        def start(self, ids, mask):
            self.last = ids[:, -1].copy()
            return self._s()

        def _s(self):
            s = np.zeros((len(self.last), 10), np.float32)
            s[np.arange(len(self.last)), (self.last + 1) % 10] = 1
            return s

        def step(self, tok):
            self.last = tok.copy()
            return self._s()

        def reorder(self, index):
            self.last = self.last[index]

    ids = np.array([[0, 7], [0, 3]], np.int64)
    got = greedy_or_sample(Counter(), ids, np.ones_like(ids), max_new_tokens=6, eos=(9,), pad=0)
    np.testing.assert_array_equal(got, [[8, 9, 0, 0, 0, 0], [4, 5, 6, 7, 8, 9]])
    got = greedy_or_sample(Counter(), ids[:1], np.ones_like(ids[:1]), max_new_tokens=6, eos=(9,), pad=0)
    np.testing.assert_array_equal(got, [[8, 9]])           # stops when every row is done


BEAM_CASES = [
    dict(num_beams=3, length_penalty=1.0, early_stopping=False),
    dict(num_beams=4, length_penalty=2.0, early_stopping=True),
    dict(num_beams=2, length_penalty=0.5, early_stopping="never"),
    dict(num_beams=3, length_penalty=-1.0, early_stopping="never"),
]


@pytest.mark.parametrize("case", BEAM_CASES, ids=lambda c: f"nb{c['num_beams']}-lp{c['length_penalty']}-{c['early_stopping']}")
def test_beam_search_seq2seq_matches_transformers(case):
    model = _bart()
    src, src_mask = _left_padded([[5, 9, 13, 7, 21, 2], [11, 4, 2], [30, 31, 3, 17, 2]])
    start = np.full((3, 1), EOS, np.int64)
    with torch.no_grad():
        ref = model.generate(input_ids=torch.from_numpy(src), attention_mask=torch.from_numpy(src_mask),
                             generation_config=_gen_config(max_new_tokens=10, decoder_start_token_id=EOS,
                                                           **case)).numpy()[:, 1:]
    got = beam_search(_Seq2SeqOracle(model, src, src_mask), start, np.ones_like(start), max_new_tokens=10,
                      eos=(EOS,), pad=PAD, **case)
    np.testing.assert_array_equal(got, ref)
    assert (ref == EOS).any() or case["early_stopping"] is False     # the eos paths were exercised


def test_beam_search_decoder_only_left_padded_matches_transformers():
    model = _gpt2()
    with torch.no_grad():                          # eos ids likelier, so beams finish at different steps
        model.transformer.wte.weight[[EOS, 7]] *= 2
    ids, mask = _left_padded(PROMPTS)
    case = dict(num_beams=3, length_penalty=1.0, early_stopping=True)
    with torch.no_grad():
        ref = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                             generation_config=_gen_config(max_new_tokens=9, eos=[EOS, 7], **case)).numpy()
    got = beam_search(_DecoderOnlyOracle(model), ids, mask, max_new_tokens=9, eos=(EOS, 7), pad=PAD, **case)
    np.testing.assert_array_equal(got, ref[:, ids.shape[1]:])


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, None, None), (1.0, 5, None), (1.0, None, 0.8),
                                                     (1.3, 7, 0.6), (0.5, 1, None), (1.0, None, 0.0)])
def test_warpers_match_transformers(temperature, top_k, top_p):
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)
    rng = np.random.default_rng(3)
    scores = (rng.standard_normal((4, 50)) * 2).astype(np.float32)
    procs = LogitsProcessorList()
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if top_k is not None:
        procs.append(TopKLogitsWarper(top_k))
    if top_p is not None:
        procs.append(TopPLogitsWarper(top_p))
    ref = procs(None, torch.from_numpy(scores)).numpy()
    got = warp(scores, Sampling(temperature, top_k, top_p))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
    np.testing.assert_allclose(got[np.isfinite(got)], ref[np.isfinite(ref)], rtol=1e-6)


def test_sampling_is_seeded_and_follows_the_distribution():
    class Fixed:
        def __init__(self, logits):
            self.logits = logits

        def start(self, ids, mask):
            return np.repeat(self.logits[None], len(ids), 0)

        def step(self, tok):
            return np.repeat(self.logits[None], len(tok), 0)

        def reorder(self, index):
            pass

    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    ids = np.zeros((1, 1), np.int64)
    run = lambda s: greedy_or_sample(Fixed(logits), ids, np.ones_like(ids), max_new_tokens=4000, eos=(), pad=0,
                                     sampling=s)[0]
    a, b = run(Sampling(seed=5)), run(Sampling(seed=5))
    np.testing.assert_array_equal(a, b)
    freq = np.bincount(a, minlength=4) / a.size
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)     # ~5 sigma at n=4000
    k2 = run(Sampling(top_k=2, seed=1))
    assert set(np.unique(k2)) == {0, 1}
    assert abs((k2 == 0).mean() - 0.5 / 0.8) < 0.03
    cold = run(Sampling(temperature=0.05, seed=1))
    assert (cold == 0).mean() > 0.99
