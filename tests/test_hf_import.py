"""Hugging Face checkpoints through the CLI, against transformers itself.

Each case random-initialises a tiny model of one family from its config (no
hub), perturbs every weight away from HF's init (LayerNorm weights of 1 and
zero biases would hide a swapped or dropped tensor), saves it with
save_pretrained, then runs exactly what a user runs:

    graphc import DIR -o spec.yaml
    graphc build spec.yaml --weights DIR -o model.onnx

and compares ONNX Runtime's outputs with the transformers model's on a padded
batch (right padding: attention_mask has zeros). Tolerance 1e-5 (float32).
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import cli, ort_run, user_error

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

TOL = 1e-5
B, S = 3, 7
LENGTHS = (7, 4, 1)          # row 0 full, rows 1 and 2 right-padded


def _perturb(model) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:     # fixed tables (Marian's sinusoidal positions) are not weights
                continue
            if "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    model.eval()


def _perturb_std(model, std: float) -> None:
    """Weights N(0, std^2), LayerNorm weights 1 + N(0, std^2) (seeded)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.0
            p.copy_(base + std * torch.randn(p.shape, generator=g))


def _gpt2(head: bool):
    c = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=61, n_positions=32,
                                bos_token_id=1, eos_token_id=2)
    return (transformers.GPT2LMHeadModel if head else transformers.GPT2Model)(c)


def _llama(head: bool, tied: bool = False, mistral: bool = False):
    kw = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=61, max_position_embeddings=32, tie_word_embeddings=tied,
              rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if mistral:
        c = transformers.MistralConfig(sliding_window=16, **kw)
        return (transformers.MistralForCausalLM if head else transformers.MistralModel)(c)
    c = transformers.LlamaConfig(**kw)
    return (transformers.LlamaForCausalLM if head else transformers.LlamaModel)(c)


def _bert(kind: str):
    c = transformers.BertConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                vocab_size=61, max_position_embeddings=32, num_labels=3)
    cls = {"base": transformers.BertModel, "mlm": transformers.BertForMaskedLM,
           "cls": transformers.BertForSequenceClassification}[kind]
    return cls(c)


def _distilbert(kind: str):
    c = transformers.DistilBertConfig(dim=32, hidden_dim=48, n_layers=2, n_heads=4, vocab_size=61,
                                      max_position_embeddings=32)
    return (transformers.DistilBertForMaskedLM if kind == "mlm" else transformers.DistilBertModel)(c)


def _seq2seq(marian: bool, head: bool):
    kw = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
              encoder_ffn_dim=48, decoder_ffn_dim=48, vocab_size=61, max_position_embeddings=32)
    if marian:       # real Marian models scale embeddings and use swish
        c = transformers.MarianConfig(pad_token_id=60, decoder_start_token_id=60, eos_token_id=0,
                                      scale_embedding=True, activation_function="swish", **kw)
        return (transformers.MarianMTModel if head else transformers.MarianModel)(c)
    c = transformers.BartConfig(**kw)
    return (transformers.BartForConditionalGeneration if head else transformers.BartModel)(c)


def _t5(kind: str):
    kw = dict(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4, vocab_size=61,
              relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0)
    if kind == "v1.1":        # Flan-T5's recipe: gated GELU, untied head
        c = transformers.T5Config(feed_forward_proj="gated-gelu", tie_word_embeddings=False, **kw)
        return transformers.T5ForConditionalGeneration(c)
    c = transformers.T5Config(**kw)
    return {"lm": transformers.T5ForConditionalGeneration, "base": transformers.T5Model,
            "encoder": transformers.T5EncoderModel}[kind](c)


CASES = {
    "gpt2-lm": (lambda: _gpt2(True), "logits"),
    "gpt2-base": (lambda: _gpt2(False), "last_hidden_state"),
    "llama-lm": (lambda: _llama(True), "logits"),
    "llama-lm-tied": (lambda: _llama(True, tied=True), "logits"),
    "llama-base": (lambda: _llama(False), "last_hidden_state"),
    "mistral-lm": (lambda: _llama(True, mistral=True), "logits"),
    "bert-base": (lambda: _bert("base"), "last_hidden_state pooler_output"),
    "bert-mlm": (lambda: _bert("mlm"), "logits"),
    "bert-cls": (lambda: _bert("cls"), "logits"),
    "distilbert-base": (lambda: _distilbert("base"), "last_hidden_state"),
    "distilbert-mlm": (lambda: _distilbert("mlm"), "logits"),
    "bart-lm": (lambda: _seq2seq(False, True), "logits"),
    "bart-base": (lambda: _seq2seq(False, False), "last_hidden_state encoder_last_hidden_state"),
    "marian-mt": (lambda: _seq2seq(True, True), "logits"),
    "marian-base": (lambda: _seq2seq(True, False), "last_hidden_state encoder_last_hidden_state"),
    "t5-lm": (lambda: _t5("lm"), "logits"),
    "t5-v1.1-lm": (lambda: _t5("v1.1"), "logits"),
    "t5-base": (lambda: _t5("base"), "last_hidden_state encoder_last_hidden_state"),
    "t5-encoder": (lambda: _t5("encoder"), "last_hidden_state"),
}
T, TGT_LENGTHS = 5, (5, 3, 2)


def _import_and_build(model, tmp_path):
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    spec, onnx_path = tmp_path / "spec.yaml", tmp_path / "model.onnx"
    rc, _, err = cli("import", ckpt, "-o", spec)
    assert rc == 0, err
    rc, _, err = cli("build", spec, "--weights", ckpt, "-o", onnx_path)
    assert rc == 0, err
    return ckpt, spec, onnx_path, err


@pytest.mark.parametrize("case", list(CASES))
def test_family_parity(case, tmp_path):
    make, outputs = CASES[case]
    torch.manual_seed(0)
    model = make()
    _perturb(model)
    _, spec, onnx_path, _ = _import_and_build(model, tmp_path)
    rng = np.random.default_rng(1)
    ids = rng.integers(3, 61, size=(B, S)).astype(np.int64)
    mask = (np.arange(S)[None, :] < np.array(LENGTHS)[:, None]).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask}
    kwargs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if case.startswith("bert"):
        types = rng.integers(0, 2, size=(B, S)).astype(np.int64)
        feeds["token_type_ids"] = types
        kwargs["token_type_ids"] = torch.from_numpy(types)
    if case.startswith(("bart", "marian", "t5")) and case != "t5-encoder":
        dec = rng.integers(3, 60, size=(B, T)).astype(np.int64)
        dec_mask = (np.arange(T)[None, :] < np.array(TGT_LENGTHS)[:, None]).astype(np.int64)
        feeds.update(decoder_input_ids=dec, decoder_attention_mask=dec_mask)
        kwargs.update(decoder_input_ids=torch.from_numpy(dec), decoder_attention_mask=torch.from_numpy(dec_mask))
    got = ort_run(onnx_path.read_bytes(), feeds)
    with torch.no_grad():
        want = model(**kwargs)
    for name in outputs.split():
        w = getattr(want, name).numpy()
        g = got[name]
        assert g.shape == w.shape, (name, g.shape, w.shape)
        # padded positions too: with right padding every query row still sees a real key
        err = float(np.abs(g - w).max())
        assert err <= TOL, f"{case} {name}: max abs diff {err:.2e}"


def test_square_conv1d_is_transposed_by_the_map(tmp_path):
    """GPT-2's attn.c_proj is square: loaded as it is stored it gives no error
    and wrong numbers. The imported map transposes it explicitly; the same
    build without that rule's transpose must differ from transformers."""
    torch.manual_seed(0)
    model = _gpt2(False)
    _perturb(model)
    ckpt, spec, onnx_path, _ = _import_and_build(model, tmp_path)
    text = spec.read_text()
    rule = "to: 'h.layers.{1}.self_attn.out_proj.weight', transpose: true}"
    assert rule in text
    (bad := tmp_path / "bad.yaml").write_text(text.replace(rule, "to: 'h.layers.{1}.self_attn.out_proj.weight'}"))
    rc, _, err = cli("build", bad, "--weights", ckpt, "-o", tmp_path / "bad.onnx")
    assert rc == 0, err                  # square: nothing can detect it from shapes ...
    ids = np.arange(5, dtype=np.int64)[None] + 3
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids)).last_hidden_state.numpy()
    good = ort_run(onnx_path.read_bytes(), feeds)["last_hidden_state"]
    wrong = ort_run((tmp_path / "bad.onnx").read_bytes(), feeds)["last_hidden_state"]
    assert np.abs(good - want).max() <= TOL
    assert np.abs(wrong - want).max() > 1e-2      # ... which is why the import says transpose, always


def test_sharded_bfloat16_checkpoint(tmp_path):
    """A LLaMA saved in bfloat16 and sharded (model.safetensors.index.json):
    the directory loads, with a note about the conversion, and matches the
    bfloat16 model's weights evaluated in float32."""
    torch.manual_seed(0)
    model = _llama(True)
    _perturb(model)
    model = model.to(torch.bfloat16)
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt, max_shard_size="20KB")
    assert (ckpt / "model.safetensors.index.json").exists()
    # the import reads names, shapes and (for tied heads) bits: no float32 copy of the
    # checkpoint (a 7B bfloat16 model would need 28 GB for it)
    from graphc.hf_import.common import read_config, tensor_names
    cfg = read_config(ckpt)
    assert tensor_names(cfg)["model.embed_tokens.weight"] == tuple(model.model.embed_tokens.weight.shape)
    table = cfg.tensors["model.embed_tokens.weight"]
    assert table.dtype == np.uint16 and not table.flags.owndata       # the file's mapped bits
    spec = tmp_path / "spec.yaml"
    assert cli("import", ckpt, "-o", spec)[0] == 0
    rc, _, err = cli("build", spec, "--weights", ckpt, "-o", tmp_path / "m.onnx")
    assert rc == 0, err
    assert "bfloat16 tensors in" in err and "converted to float32 (exactly)" in err
    # the oracle: transformers' own float32 load of the same directory (converting the
    # bfloat16 model in memory would keep its rounded rotary frequencies)
    model = transformers.LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    ids = np.array([[5, 9, 3, 7]], np.int64)
    got = ort_run((tmp_path / "m.onnx").read_bytes(), {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids)).logits.numpy()
    assert np.abs(got["logits"] - want).max() <= TOL


@pytest.mark.parametrize("change, message", [
    ({"model_type": "gpt_neox"}, "model_type 'gpt_neox' is not supported: graphc lacks an importer (parallel "
     "attention + MLP residuals)"),
    ({"model_type": "frobnet"}, "model_type 'frobnet' is not supported"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}},
     "rope_parameters.rope_type = \"yarn\" is not supported: graphc lacks the 'yarn' rotary scaling"),
    ({"hidden_act": "relu"}, "hidden_act = \"relu\" is not supported"),
])
def test_unsupported_config_is_a_clear_error(tmp_path, change, message):
    import json
    model = _llama(True)
    model.config.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(change)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    user_error(cli("import", tmp_path, "-o", tmp_path / "s.yaml"), message)
    assert not (tmp_path / "s.yaml").exists()


def test_docs_console_block_runs_as_written(tmp_path, monkeypatch):
    """docs/huggingface.md's console block, run in a directory holding the
    checkpoint it names (a tiny GPT-2, made here with save_pretrained)."""
    from test_tutorial import _console_blocks, _output_matches, _run_console
    from tests.helpers import ROOT
    doc = ROOT / "docs" / "huggingface.md"
    blocks = _console_blocks(doc.read_text(encoding="utf-8"))
    assert blocks
    torch.manual_seed(0)
    c = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=1000, n_positions=128,
                                bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(c).eval()
    _perturb_std(model, 0.15)           # transformers' init (0.02) makes greedy repeat one token
    model.save_pretrained(tmp_path / "gpt2-tiny")
    monkeypatch.chdir(tmp_path)
    for line, _, block in blocks:
        commands = [i for i, ln in enumerate(block) if ln.startswith("$ ")]
        for at, stop in zip(commands, commands[1:] + [len(block)]):
            got = _run_console(block[at][2:])
            want = block[at + 1:stop]
            assert _output_matches(want, got), f"docs/huggingface.md:{line + at + 1}: {block[at]}\n" \
                "--- the docs show:\n" + "\n".join(want) + "\n--- graphc printed:\n" + "\n".join(got)
            if block[at].startswith("$ graphc generate") and block[at].endswith("--max-new-tokens 8"):
                # the docs' ids are transformers' ids
                with torch.no_grad():
                    ids = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=8, do_sample=False)[0, 3:]
                assert want == [",".join(map(str, ids.tolist()))]
            elif block[at].startswith("$ graphc generate") and block[at].endswith("--num-beams 3"):
                with torch.no_grad():
                    ids = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=8, do_sample=False,
                                         num_beams=3)[0, 3:]
                assert want == [",".join(map(str, ids.tolist()))]
    assert any(ln.startswith("$ graphc generate") for _, _, b in blocks for ln in b)
    # the generation: section the docs quote is the one the import wrote
    text = doc.read_text(encoding="utf-8")
    quoted = text[text.index("```yaml\ngeneration:") + 8:]
    assert quoted[:quoted.index("```")] in (tmp_path / "gpt2.yaml").read_text()


def test_config_only_directory_and_bad_directories(tmp_path):
    """A directory with only config.json gets its spec from the config (and the
    architecture names the head); the spec checks. Missing or foreign inputs are
    exit 2 with a hint, and the import never writes over the config."""
    config = _gpt2(True).config
    config.architectures = ["GPT2LMHeadModel"]      # as model.save_pretrained writes it
    config.save_pretrained(tmp_path / "cfg")
    rc, out, err = cli("import", tmp_path / "cfg")
    assert rc == 0 and "tie: wte.weight" in out and "logits: lm_head" in out
    (spec := tmp_path / "s.yaml").write_text(out)
    assert cli("check", spec)[0] == 0
    user_error(cli("import", tmp_path / "cfg", "-o", tmp_path / "cfg" / "config.json"),
               "refusing to write the output over the input")
    user_error(cli("import", tmp_path / "nowhere"), "checkpoint directory not found")
    (tmp_path / "empty").mkdir()
    user_error(cli("import", tmp_path / "empty"), "has no config.json")
