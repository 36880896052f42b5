"""Hugging Face checkpoints at the edges: lengths, bundle targets and config variants,
against transformers itself (tiny random models saved with save_pretrained, taken
through `graphc import` and `graphc build` as a user runs them; see
tests/test_hf_import.py and tests/test_hf_generate.py for the base cases).

- full forward at sequence length 1 and at max_position_embeddings, batch 3 with
  padding (right; left too for the decoder-only families), float32, every output
  within 1e-5 of transformers' (relative to the output's largest magnitude when that
  is above 1: T5 v1.1's gated logits reach 5, and transformers' own float32 result
  differs from its float64 one by 1.7e-5 there);
- decoder-only beam search (GPT-2, LLaMA) on a left-padded batch, and every family
  through `--target ort` (and `--cache-layout shared` where the family allows it),
  greedy and beam ids equal to transformers' generate();
- config variants: Mistral's sliding window (equal up to the window, refused past
  it), LLaMA's rope scalings ('dynamic', 'linear', 'llama3' equal, 'yarn' and 'longrope'
  refused at import), GPT-2's
  reorder_and_upcast_attn (equal) and scale_attn_by_inverse_layer_idx (refused),
  BART's decoder start variants (decoder_start_token_id 0, unset so bos starts,
  generation_config.json overriding config.json).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import graphc
from graphc.errors import GraphcError

from helpers import cli, ort_run, user_error
import test_hf_generate
from test_hf_generate import PROMPTS, _SEQ2SEQ, _eos, _hf_generate, _init, _left_padded, _sources
from test_hf_import import CASES, _perturb

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
T = transformers

TOL = 1e-5
FORWARD = ["gpt2-lm", "llama-lm", "mistral-lm", "bert-base", "distilbert-mlm", "bart-lm", "marian-mt", "t5-lm",
           "t5-v1.1-lm"]


def _build(model, tmp_path, *extra, kv=False):
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    rc, _, err = cli("import", ckpt, "-o", tmp_path / "spec.yaml")
    assert rc == 0, err
    out = tmp_path / ("bundle" if kv else "m.onnx")
    rc, _, err = cli("build", tmp_path / "spec.yaml", "--weights", ckpt, *(["--kv-cache"] if kv else []), *extra,
                     "-o", out)
    assert rc == 0, err
    return out


def _worst(got, want, mask=None) -> float:
    """Max abs diff over real positions (all of them without a mask), scaled down by
    the output's largest magnitude when that is above 1."""
    if mask is not None and got.ndim == 3:
        got, want = got[mask.astype(bool)], want[mask.astype(bool)]
    return float(np.abs(got - want).max()) / max(1.0, float(np.abs(want).max()))


@pytest.mark.parametrize("case", FORWARD)
def test_forward_at_length_1_and_at_max_position_embeddings(case, tmp_path):
    make, outputs = CASES[case]
    torch.manual_seed(0)
    model = make()
    _perturb(model)
    blob = _build(model, tmp_path).read_bytes()
    longest = 16 if case.startswith("mistral") else 32     # Mistral: its sliding_window (16) is the limit
    decoder_only = case.startswith(("gpt2", "llama", "mistral"))
    rng = np.random.default_rng(1)
    checked = 0
    for S, lengths, left in [(1, (1, 1, 1), False), (longest, (longest, 9, 1), False),
                             (longest, (longest, 9, 1), True)]:
        if left and not decoder_only:
            continue
        ids = rng.integers(3, 60, size=(3, S)).astype(np.int64)
        at = np.arange(S)[None]
        n = np.array(lengths)[:, None]
        mask = (at >= S - n if left else at < n).astype(np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if case.startswith("bert"):
            feeds["token_type_ids"] = rng.integers(0, 2, size=(3, S)).astype(np.int64)
        if case.startswith(("bart", "marian", "t5")):
            feeds["decoder_input_ids"] = rng.integers(3, 60, size=(3, S)).astype(np.int64)
            feeds["decoder_attention_mask"] = (at < np.array([S, max(S // 2, 1), 1])[:, None]).astype(np.int64)
        got = ort_run(blob, feeds)
        with torch.no_grad():
            want = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        for name in outputs.split():
            w = getattr(want, name).numpy()
            assert got[name].shape == w.shape
            # left padding: a padded query row sees no key; transformers and graphc fill it differently
            err = _worst(got[name], w, mask if left else None)
            assert err <= TOL, f"{case} {name} seq {S} {'left' if left else 'right'}: max abs diff {err:.2e}"
            checked += 1
    assert checked >= 2


# --------------------------------------------------------------- bundles


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """tests/test_hf_generate.py's checkpoints and bundles (family -> model, bundle, config)."""
    return test_hf_generate.imported.__wrapped__(tmp_path_factory)


def _ids_after_eos_as_pad(want, config):
    """transformers fills after a row's eos with pad (beam search: `pad or eos`); graphc with pad."""
    e = np.isin(want, _eos(config))
    return np.where(np.cumsum(e, 1) - e > 0, config["pad"], want)


@pytest.mark.parametrize("family, layout", [("gpt2", "concat"), ("llama", "concat"), ("llama", "shared")])
def test_decoder_only_beam_search_equals_transformers_left_padded(family, layout, imported):
    model, bundle, config = imported(family, layout)
    ids, mask = _left_padded(PROMPTS, config["pad"])
    with torch.no_grad():
        want = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                              max_new_tokens=10, do_sample=False, num_beams=3, length_penalty=0.7,
                              early_stopping=True).numpy()[:, ids.shape[1]:]
    got = graphc.generate(bundle, input_ids=ids, max_new_tokens=10, num_beams=3, length_penalty=0.7,
                          early_stopping=True)
    assert len(set(want.ravel().tolist())) > 5
    np.testing.assert_array_equal(got, _ids_after_eos_as_pad(want, config))


@pytest.mark.parametrize("family", ["gpt2", "llama", "bart", "marian", "t5"])
def test_target_ort_bundle_greedy_and_beam_equal_transformers(family, imported, tmp_path):
    """The default-layout bundle of `--target ort` (ORT's fused attention ops), greedy
    (and 3 beams), against transformers on the same batch as the default target."""
    model, bundle, _ = imported(family)
    out = tmp_path / "ort"
    rc, _, err = cli("build", bundle.parent / "spec.yaml", "--weights", bundle.parent / "ckpt", "--kv-cache",
                     "--target", "ort", "-o", out)
    assert rc == 0, err
    config = json.loads((out / "graphc_generation.json").read_text())
    # BART's and Marian's beams on --target ort: the shared layout's test in test_hf_generate.py
    for beams in (1,) if family in ("bart", "marian") else (1, 3):
        kw = dict(num_beams=beams, length_penalty=0.7, early_stopping=True) if beams > 1 else {}
        if family in ("gpt2", "llama"):
            ids, mask = _left_padded(PROMPTS, config["pad"])
            with torch.no_grad():
                want = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                      max_new_tokens=10, do_sample=False, **kw).numpy()[:, ids.shape[1]:]
            got = graphc.generate(out, input_ids=ids, max_new_tokens=10, **kw)
        else:
            src, mask = _sources(config["pad"])
            want = _hf_generate(model, src, mask, 10, **kw)
            got = graphc.generate(out, src_ids=src, max_new_tokens=10, **kw)
        np.testing.assert_array_equal(got, _ids_after_eos_as_pad(want, config), err_msg=f"{family} beams {beams}")


def test_t5_past_relative_attention_max_distance(imported):
    """Sources of 40 tokens and 45 new ones, past relative_attention_max_distance (20):
    the encoder's and the cached decoder's distances fall in the log-spaced and the
    saturated buckets. Greedy and 3 beams equal to transformers'."""
    model, bundle, config = imported("t5")
    rng = np.random.default_rng(3)
    src = np.full((3, 40), config["pad"], np.int64)
    for r, n in enumerate((40, 25, 3)):
        src[r, :n] = rng.integers(3, 90, n)
        src[r, n - 1] = 93                                   # eos ends each source, as T5 tokenizers do
    mask = (src != config["pad"]).astype(np.int64)
    for beams in (1, 3):
        want = _hf_generate(model, src, mask, 45, num_beams=beams)
        got = graphc.generate(bundle, src_ids=src, max_new_tokens=45, num_beams=beams)
        assert want.shape[1] > 25                            # decoded past max_distance
        np.testing.assert_array_equal(got, _ids_after_eos_as_pad(want, config), err_msg=f"beams {beams}")


def test_t5_shared_cache_layout_is_refused_by_name(imported, tmp_path):
    """T5's relative-position bias over the cache needs the concat layout: the shared
    one is refused at the attention that has it, not built wrong."""
    _, bundle, _ = imported("t5")
    err = user_error(cli("build", bundle.parent / "spec.yaml", "--weights", bundle.parent / "ckpt", "--kv-cache",
                         "--target", "ort", "--cache-layout", "shared", "-o", tmp_path / "b"),
                     "the shared cache layout takes self-attention with one packed q/k/v projection and no "
                     "attn_mask (relative-position biases need the concat layout)", located=bundle.parent / "spec.yaml")
    assert "multihead_attention 'sa'" in err
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------- config variants


def _llama_like(cls=T.LlamaForCausalLM, config=T.LlamaConfig, **kw):
    kw = {"max_position_embeddings": 24, "eos_token_id": 2, **kw}
    c = config(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
               **kw)
    torch.manual_seed(0)
    return _init(cls(c))


def _greedy_pair(model, bundle, config, steps):
    ids, mask = _left_padded(PROMPTS, config["pad"])
    with torch.no_grad():
        want = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                              max_new_tokens=steps, do_sample=False).numpy()[:, ids.shape[1]:]
    return graphc.generate(bundle, input_ids=ids, max_new_tokens=steps), _ids_after_eos_as_pad(want, config)


def test_mistral_sliding_window_equal_up_to_it_and_refused_past_it(tmp_path):
    """sliding_window 12: prompt (7, left-padded) + 6 new tokens fill it exactly and the
    ids equal transformers' (whose mask there is still causal); one more token would
    need the sliding mask, which graphc lacks: refused before decoding, naming the
    limit, by the API and the CLI."""
    model = _llama_like(T.MistralForCausalLM, T.MistralConfig, sliding_window=12)
    bundle = _build(model, tmp_path, kv=True)
    config = json.loads((bundle / "graphc_generation.json").read_text())
    got, want = _greedy_pair(model, bundle, config, 6)
    assert len(set(want.ravel().tolist())) > 4
    np.testing.assert_array_equal(got, want)
    with pytest.raises(GraphcError, match=r"the prompt \(7 tokens\) plus max_new_tokens=7 is longer than "
                                                 r"the model's 12 positions"):
        graphc.generate(bundle, input_ids=PROMPTS[0], max_new_tokens=7)
    user_error(cli("generate", bundle, "--input-ids", ",".join(map(str, PROMPTS[0])), "--max-new-tokens", "7"),
               "is longer than the model's 12 positions", hint="use --max-new-tokens 6 or less")
    # with a window transformers 5 does not apply it: the same weights beyond 12 tokens differ
    with torch.no_grad():
        long = torch.arange(3, 19)[None]
        windowed = model(input_ids=long).logits
        model.config.sliding_window = None
        causal = model(input_ids=long).logits
    assert float((windowed - causal)[0, 12:].abs().max()) > 1e-3     # why longer inputs must be refused


def test_llama_dynamic_rope_equals_transformers_up_to_max_position_embeddings(tmp_path):
    """'dynamic' (NTK) rope recomputes its frequencies only for positions from
    max_position_embeddings on, which graphc refuses: below, the plain rotation."""
    model = _llama_like(rope_scaling={"rope_type": "dynamic", "factor": 4.0})
    assert model.config.rope_parameters["rope_type"] == "dynamic"
    onnx_path = _build(model, tmp_path / "plain")
    ids = np.random.default_rng(0).integers(3, 96, size=(2, 24)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, :5] = 0
    got = ort_run(onnx_path.read_bytes(), {"input_ids": ids, "attention_mask": mask})["logits"]
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    assert _worst(got, want, mask) <= TOL
    bundle = _build(model, tmp_path / "kv", kv=True)
    config = json.loads((bundle / "graphc_generation.json").read_text())
    got, want = _greedy_pair(model, bundle, config, 12)        # 7 + 12 - 1 positions of 24
    np.testing.assert_array_equal(got, want)
    user_error(cli("generate", bundle, "--input-ids", "1,5,9", "--max-new-tokens", "23"),
               "is longer than the model's 24 positions")


SCALED_ROPE = {
    "linear": {"rope_type": "linear", "factor": 2.5},
    # head_dim 16, theta 10000: wavelengths 6.3 (kept: below 32 / 4), 19.9 (blended), 63 and up (divided)
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32},
}


@pytest.mark.parametrize("kind", list(SCALED_ROPE))
def test_llama_scaled_rope_equals_transformers(kind, tmp_path):
    """'linear' and 'llama3' rope (Llama 3.1/3.2 checkpoints) scale the frequencies at
    every position: imported as the blocks' rope_scaling. Full forward at
    max_position_embeddings (64), then greedy and 3-beam ids of a left-padded batch
    through the default and shared-cache bundles (llama3: --target ort too), all against
    transformers; and the plain rotation (the rope_scaling lines deleted) differs."""
    model = _llama_like(rope_scaling=dict(SCALED_ROPE[kind]), max_position_embeddings=64)
    assert model.config.rope_parameters["rope_type"] == kind
    onnx_path = _build(model, tmp_path)
    spec = (tmp_path / "spec.yaml").read_text()
    assert f"rope_scaling: {kind}" in spec
    ids = np.random.default_rng(0).integers(3, 96, size=(2, 64)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, :20] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        want = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    err = _worst(ort_run(onnx_path.read_bytes(), feeds)["logits"], want, mask)
    assert err <= TOL, f"{kind}: max abs diff {err:.2e}"
    plain = tmp_path / "plain.yaml"
    plain.write_text("\n".join(ln for ln in spec.splitlines() if not ln.strip().startswith("rope_")
                               or ln.strip().startswith(("rope_base", "rope_max_len", "rope_theta"))))
    assert cli("build", plain, "--weights", tmp_path / "ckpt", "-o", tmp_path / "plain.onnx")[0] == 0
    assert _worst(ort_run((tmp_path / "plain.onnx").read_bytes(), feeds)["logits"], want, mask) > 1e-3
    layouts = [("b", []), ("ort", ["--target", "ort"]), ("shared", ["--target", "ort", "--cache-layout", "shared"])]
    for name, extra in layouts if kind == "llama3" else layouts[::2]:
        rc, _, err_text = cli("build", tmp_path / "spec.yaml", "--weights", tmp_path / "ckpt", "--kv-cache", *extra,
                              "-o", tmp_path / name)
        assert rc == 0, err_text
        config = json.loads((tmp_path / name / "graphc_generation.json").read_text())
        ids, mask = _left_padded(PROMPTS, config["pad"])
        for beams in (1, 3):
            with torch.no_grad():
                want = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                      max_new_tokens=12, do_sample=False, num_beams=beams).numpy()[:, ids.shape[1]:]
            got = graphc.generate(tmp_path / name, input_ids=ids, max_new_tokens=12, num_beams=beams)
            assert len(set(want.ravel().tolist())) > 5
            np.testing.assert_array_equal(got, _ids_after_eos_as_pad(want, config), err_msg=f"{name} beams {beams}")


@pytest.mark.parametrize("scaling", [{"rope_type": "yarn", "factor": 4.0},
                                     {"rope_type": "longrope", "factor": 4.0, "short_factor": [1.0] * 8,
                                      "long_factor": [2.0] * 8, "original_max_position_embeddings": 16}])
def test_other_rope_scalings_are_refused_at_import(scaling, tmp_path):
    """yarn and longrope also rescale cos/sin (attention_factor): refused, never built
    as another rotation."""
    c = T.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=1,
                      num_attention_heads=4, max_position_embeddings=32, rope_scaling=scaling)
    c.save_pretrained(tmp_path / "cfg")
    kind = scaling["rope_type"]
    user_error(cli("import", tmp_path / "cfg", "-o", tmp_path / "s.yaml"),
               f"rope_parameters.rope_type = \"{kind}\" is not supported: graphc lacks the '{kind}' rotary scaling",
               hint="supported: 'default', 'linear', 'llama3'")
    assert not (tmp_path / "s.yaml").exists()


def test_legacy_rope_scaling_keys(tmp_path):
    """config.json as transformers 4.x wrote it (rope_theta + rope_scaling with 'type'):
    linear imports with its factor, yarn is refused the same way, a factor that is not a
    positive number is named."""
    c = T.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=1,
                      num_attention_heads=4, max_position_embeddings=32)
    c.save_pretrained(tmp_path / "cfg")
    legacy = json.loads((tmp_path / "cfg" / "config.json").read_text())
    legacy.pop("rope_parameters")
    for scaling, want in [({"type": "linear", "factor": 4.0}, "rope_factor: 4.0"),
                          ({"type": "yarn", "factor": 4.0}, "the 'yarn' rotary scaling"),
                          ({"type": "linear", "factor": "4"}, "rope_scaling.factor must be a positive number")]:
        legacy.update(rope_theta=500000.0, rope_scaling=scaling)
        (tmp_path / "cfg" / "config.json").write_text(json.dumps(legacy))
        rc, out, err = cli("import", tmp_path / "cfg")
        if want.startswith("rope_factor"):
            assert rc == 0, err
            assert want in out and "rope_scaling: linear" in out and "rope_theta: 500000.0" in out
        else:
            user_error((rc, out, err), want)


def test_gpt2_reorder_and_upcast_attn_equals_transformers(tmp_path):
    """reorder_and_upcast_attn computes the scores in float32: a float32 build is that
    already. Checked against transformers' eager attention, where the flag acts."""
    c = T.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=96, n_positions=32, bos_token_id=1, eos_token_id=2,
                     reorder_and_upcast_attn=True)
    torch.manual_seed(0)
    model = _init(T.GPT2LMHeadModel(c), 0.15)
    model.config._attn_implementation = "eager"
    onnx_path = _build(model, tmp_path / "plain")
    ids = np.random.default_rng(0).integers(3, 96, size=(2, 32)).astype(np.int64)
    mask = (np.arange(32)[None] < np.array([[32], [11]])).astype(np.int64)
    got = ort_run(onnx_path.read_bytes(), {"input_ids": ids, "attention_mask": mask})["logits"]
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    assert _worst(got, want) <= TOL
    bundle = _build(model, tmp_path / "kv", kv=True)
    config = json.loads((bundle / "graphc_generation.json").read_text())
    got, want = _greedy_pair(model, bundle, config, 10)
    assert len(set(want.ravel().tolist())) > 4
    np.testing.assert_array_equal(got, want)


def test_gpt2_scale_attn_by_inverse_layer_idx_is_refused(tmp_path):
    c = T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=61, n_positions=32,
                     scale_attn_by_inverse_layer_idx=True)
    c.architectures = ["GPT2LMHeadModel"]
    c.save_pretrained(tmp_path / "cfg")
    user_error(cli("import", tmp_path / "cfg", "-o", tmp_path / "s.yaml"),
               "scale_attn_by_inverse_layer_idx = true is not supported: graphc lacks a per-layer attention scale",
               hint="share one scale")
    assert not (tmp_path / "s.yaml").exists()


@pytest.mark.parametrize("variant", ["start-0", "start-unset", "generation-config-overrides"])
def test_bart_decoder_start_variants_equal_transformers(variant, tmp_path):
    """Which id starts the decoder: decoder_start_token_id (0 here, not BART's usual 2);
    unset, so transformers starts from bos; generation_config.json's value over
    config.json's. Greedy ids (and 3 beams' from 0) equal to generate()'s."""
    kw = {"start-0": dict(decoder_start_token_id=0), "start-unset": dict(decoder_start_token_id=None),
          "generation-config-overrides": dict(decoder_start_token_id=2)}[variant]
    torch.manual_seed(0)
    model = _init(T.BartForConditionalGeneration(T.BartConfig(eos_token_id=6, bos_token_id=0, **kw, **_SEQ2SEQ)),
                  0.15)
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    if variant == "generation-config-overrides":
        g = json.loads((ckpt / "generation_config.json").read_text())
        g["decoder_start_token_id"] = 7
        (ckpt / "generation_config.json").write_text(json.dumps(g))
        model.generation_config = T.GenerationConfig.from_pretrained(ckpt)
    expected_start = {"start-0": 0, "start-unset": 0, "generation-config-overrides": 7}[variant]
    assert cli("import", ckpt, "-o", tmp_path / "spec.yaml")[0] == 0
    rc, _, err = cli("build", tmp_path / "spec.yaml", "--weights", ckpt, "--kv-cache", "-o", tmp_path / "b")
    assert rc == 0, err
    config = json.loads((tmp_path / "b" / "graphc_generation.json").read_text())
    src, mask = _sources(config["pad"])
    for beams in (1, 3) if variant == "start-0" else (1,):
        t = torch.from_numpy
        with torch.no_grad():
            full = model.generate(input_ids=t(src), attention_mask=t(mask), max_new_tokens=8, do_sample=False,
                                  forced_eos_token_id=None, num_beams=beams).numpy()
        assert (full[:, 0] == expected_start).all()                 # the oracle starts where we think
        got = graphc.generate(tmp_path / "b", src_ids=src, max_new_tokens=8, num_beams=beams)
        np.testing.assert_array_equal(got, _ids_after_eos_as_pad(full[:, 1:], config), err_msg=f"beams {beams}")


@pytest.mark.parametrize("extra, message, key", [
    ("rope_scaling: linear, rope_factor: 0.0", "rope_factor must be positive, got 0.0", "rope_factor"),
    ("rope_scaling: llama3, rope_factor: 8.0, rope_low_freq_factor: 4.0, rope_high_freq_factor: 1.0",
     "rope_scaling llama3 needs 0 < rope_low_freq_factor < rope_high_freq_factor, got 4.0 and 1.0",
     "rope_high_freq_factor"),
])
def test_bad_rope_scaling_arguments_are_spec_errors(extra, message, key):
    text = f"""graphc: 1
dims: {{batch: 2, seq: 8}}
inputs:
  x: {{dtype: float32, shape: [batch, seq, 32]}}
layers:
  - {{name: a, kind: multihead_attention, input: x, heads: 4, rope: half, {extra}}}
outputs: {{y: a}}
"""
    user_error(text, message, at=key)


def test_rope_scaling_without_rope_is_a_spec_error():
    text = """graphc: 1
dims: {batch: 2, seq: 8}
inputs:
  x: {dtype: float32, shape: [batch, seq, 32]}
layers:
  - {name: a, kind: multihead_attention, input: x, heads: 4, rope_scaling: linear, rope_factor: 2.0}
outputs: {y: a}
"""
    user_error(text, "rope_scaling scales rotary frequencies, but this attention has no rope", at="rope_scaling",
               hint="add rope: half")


def test_llama3_style_eos_list_ends_rows_at_any_of_its_ids(tmp_path):
    """eos_token_id a list (Llama 3: <|end_of_text|>, <|eom_id|>, <|eot_id|>): a row ends at
    whichever comes first, greedy and in beam search, as in transformers."""
    model = _llama_like(eos_token_id=[2, 33, 23], max_position_embeddings=64)
    bundle = _build(model, tmp_path, kv=True)
    config = json.loads((bundle / "graphc_generation.json").read_text())
    assert config["eos"] == [2, 33, 23]
    ids, mask = _left_padded(PROMPTS, config["pad"])
    ended = set()
    for beams in (1, 3):
        with torch.no_grad():
            want = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                  max_new_tokens=16, do_sample=False, num_beams=beams).numpy()[:, ids.shape[1]:]
        got = graphc.generate(bundle, input_ids=ids, max_new_tokens=16, num_beams=beams)
        np.testing.assert_array_equal(got, _ids_after_eos_as_pad(want, config), err_msg=f"beams {beams}")
        ended |= {int(x) for x in want[np.isin(want, config["eos"])]}
    assert len(ended) >= 2                      # rows really ended at different ids of the list
