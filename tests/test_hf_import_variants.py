"""Config and file variants of Hugging Face checkpoints that users really have,
through the CLI, against transformers itself (the same oracle and tolerance as
tests/test_hf_import.py: tiny random models, every weight perturbed, float32,
max abs diff 1e-5).

Each case here once imported and built without an error and gave wrong logits
(an untied head or table ignored as if it were a tied copy), or failed on a
checkpoint transformers loads (a missing ``shared`` table, a stored rotary
buffer, the tanh GELU in an MLM head). Last, an output path that is one of the
checkpoint's own files is refused, so a build can never destroy its weights.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import cli, ort_run, user_error

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
from tests.test_hf_import import _perturb  # noqa: E402  (after the skip: it imports torch)

TOL = 1e-5
T = transformers


def _bert_mlm(**kw):
    return T.BertForMaskedLM(T.BertConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                          num_attention_heads=4, vocab_size=61, max_position_embeddings=32, **kw))


def _distilbert_mlm(**kw):
    return T.DistilBertForMaskedLM(T.DistilBertConfig(dim=32, hidden_dim=48, n_layers=2, n_heads=4, vocab_size=61,
                                                      max_position_embeddings=32, **kw))


_S2S = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=48, decoder_ffn_dim=48, vocab_size=61, max_position_embeddings=32)


def _bart(cls=T.BartForConditionalGeneration, **kw):
    return cls(T.BartConfig(**_S2S, **kw))


def _marian(**kw):
    return T.MarianMTModel(T.MarianConfig(pad_token_id=60, decoder_start_token_id=60, eos_token_id=0,
                                          scale_embedding=True, **_S2S, **kw))


def _t5(**kw):
    return T.T5ForConditionalGeneration(T.T5Config(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                                   vocab_size=61, relative_attention_num_buckets=8,
                                                   relative_attention_max_distance=20, decoder_start_token_id=0, **kw))


def _gpt2(**kw):
    return T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=61, n_positions=32, **kw))


def _llama(**kw):
    return T.LlamaForCausalLM(T.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, vocab_size=61,
                                            max_position_embeddings=32, rms_norm_eps=1e-5, **kw))


def _add_rotary_buffers(ckpt):
    """What a LLaMA saved before transformers 4.31 holds: each layer's inv_freq buffer."""
    from safetensors.numpy import load_file, save_file
    t = load_file(ckpt / "model.safetensors")
    for i in range(2):
        t[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = 1.0 / 10000 ** (np.arange(0, 8, 2, dtype=np.float32) / 8)
    save_file(t, ckpt / "model.safetensors", metadata={"format": "pt"})


CASES = {   # name: (model, output, what the file holds that the old import mishandled)
    "bert-mlm-untied": (lambda: _bert_mlm(tie_word_embeddings=False), "logits"),
    "bert-mlm-gelu-new": (lambda: _bert_mlm(hidden_act="gelu_new"), "logits"),
    "distilbert-mlm-untied": (lambda: _distilbert_mlm(tie_word_embeddings=False), "logits"),
    "bart-lm-untied": (lambda: _bart(tie_word_embeddings=False), "logits"),
    "bart-base-untied": (lambda: _bart(T.BartModel, tie_word_embeddings=False), "last_hidden_state"),
    "marian-not-shared": (lambda: _marian(share_encoder_decoder_embeddings=False), "logits"),
    "marian-not-shared-untied": (lambda: _marian(share_encoder_decoder_embeddings=False, tie_word_embeddings=False),
                                 "logits"),
    "llama-rotary-buffers": (lambda: _llama(), "logits"),
    # activations transformers' GPT-2 takes from ACT2FN (the import refused them)
    "gpt2-relu": (lambda: _gpt2(activation_function="relu"), "logits"),
    "gpt2-silu": (lambda: _gpt2(activation_function="silu"), "logits"),
    "gpt2-gelu-fast": (lambda: _gpt2(activation_function="gelu_fast"), "logits"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_variant_parity(case, tmp_path):
    make, output = CASES[case]
    torch.manual_seed(0)
    model = make()
    _perturb(model)
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    if case == "llama-rotary-buffers":
        _add_rotary_buffers(ckpt)
    _check_parity(case, model, ckpt, output, tmp_path)


def _check_parity(case, model, ckpt, output, tmp_path):
    """Import and build ``ckpt`` through the CLI; ``output`` on ONNX Runtime
    must match ``model``'s within TOL on a right-padded batch."""
    spec, onnx_path = tmp_path / "spec.yaml", tmp_path / "m.onnx"
    rc, _, err = cli("import", ckpt, "-o", spec)
    assert rc == 0, err
    rc, _, err = cli("build", spec, "--weights", ckpt, "-o", onnx_path)
    assert rc == 0, err
    rng = np.random.default_rng(1)
    ids = rng.integers(3, 60, size=(2, 6)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 4:] = 0                     # right padding
    feeds = {"input_ids": ids, "attention_mask": mask}
    if case.startswith("bert"):
        feeds["token_type_ids"] = np.zeros_like(ids)
    if case.startswith(("bart", "marian", "t5")):
        feeds["decoder_input_ids"] = rng.integers(3, 59, size=(2, 4)).astype(np.int64)
        feeds["decoder_attention_mask"] = np.ones((2, 4), np.int64)
    got = ort_run(onnx_path.read_bytes(), feeds)[output]
    with torch.no_grad():
        want = getattr(model(**{k: torch.from_numpy(v) for k, v in feeds.items()}), output).numpy()
    assert got.shape == want.shape
    err = float(np.abs(got - want).max())
    assert err <= TOL, f"{case}: max abs diff {err:.2e}"


def test_output_over_a_checkpoint_file_is_refused(tmp_path):
    """-o naming a file of the --weights directory (its model.safetensors, a
    shard its index names) is refused before anything is written, for build
    and import, whether --weights is the directory or the index."""
    torch.manual_seed(0)
    model = _llama()
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    model.save_pretrained(one)
    model.save_pretrained(sharded, max_shard_size="20KB")
    index = sharded / "model.safetensors.index.json"
    shard = sorted(p for p in sharded.iterdir() if p.name.startswith("model-"))[1]
    spec = tmp_path / "spec.yaml"
    assert cli("import", one, "-o", spec)[0] == 0
    before = {p: p.read_bytes() for p in [one / "model.safetensors", shard]}
    for weights, out in [(one, one / "model.safetensors"), (sharded, shard), (index, shard)]:
        user_error(cli("build", spec, "--weights", weights, "-o", out),
                   f"refusing to write the output over the input {out}", hint="choose another output path")
    user_error(cli("import", sharded, "-o", shard), f"refusing to write the output over the input {shard}")
    assert all(p.read_bytes() == data for p, data in before.items())


def test_pre_quantized_checkpoint_is_refused_at_import(tmp_path):
    """A GPTQ/AWQ/bitsandbytes save holds packed integers (qweight, scales), not
    the float matrices the weight map loads: refused by name at import, not
    written as a spec whose build fails on missing tensors."""
    import json
    _llama().config.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    user_error(cli("import", tmp_path, "-o", tmp_path / "s.yaml"),
               'quantization_config.quant_method = "gptq" is not supported', hint="import the float checkpoint")
    assert not (tmp_path / "s.yaml").exists()


def test_dangling_symlinks_in_a_checkpoint_are_named(tmp_path):
    """A Hugging Face cache snapshot links each file to a blob; copied without
    the blobs (or cut short while downloading) the links lead nowhere. That was
    read as "no weights here": import wrote a spec from the config alone and
    build said the directory had no model.safetensors. Now both name the link."""
    import os
    import shutil
    torch.manual_seed(0)
    model = _gpt2()
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    model.save_pretrained(single)
    model.save_pretrained(sharded, max_shard_size="40KB")
    spec = tmp_path / "spec.yaml"
    assert cli("import", single, "-o", spec)[0] == 0
    (single / "model.safetensors").unlink()
    os.symlink("../blobs/0123abcd", single / "model.safetensors")
    shard = sorted(p for p in sharded.iterdir() if p.name.startswith("model-"))[0]
    shard.unlink()
    os.symlink("../blobs/4567ef01.incomplete", shard)
    for ckpt, link in [(single, single / "model.safetensors"), (sharded, shard)]:
        for res in (cli("import", ckpt, "-o", tmp_path / "s.yaml"),
                    cli("build", spec, "--weights", ckpt, "-o", tmp_path / "m.onnx")):
            user_error(res, f"{link} is a symbolic link to ../blobs/", hint="cp -rL")
        assert not (tmp_path / "s.yaml").exists() and not (tmp_path / "m.onnx").exists()
    # a dangling config.json is named too, not "no config.json"
    cfgdir = tmp_path / "cfg"
    shutil.copytree(sharded, cfgdir, symlinks=True)
    (cfgdir / "config.json").unlink()
    os.symlink("../blobs/89ab", cfgdir / "config.json")
    user_error(cli("import", cfgdir), f"{cfgdir / 'config.json'} is a symbolic link to ../blobs/89ab")


@pytest.mark.parametrize("make, arch", [
    (lambda: T.BertForQuestionAnswering(T.BertConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                                     num_attention_heads=4, vocab_size=61)),
     "BertForQuestionAnswering"),
    (lambda: T.GPT2ForSequenceClassification(T.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=61,
                                                          n_positions=32, pad_token_id=0)),
     "GPT2ForSequenceClassification"),
    (lambda: T.T5ForSequenceClassification(T.T5Config(d_model=32, d_kv=8, d_ff=48, num_layers=1, num_heads=4,
                                                      vocab_size=61)),
     "T5ForSequenceClassification"),
])
def test_a_head_the_import_does_not_model_is_refused(tmp_path, make, arch):
    """An architecture whose head the spec would drop was imported as the base
    model (a spec whose outputs are hidden states; its build then failed on the
    head's tensors, or, for T5, the import on a misworded 'nor ()' message).
    Refused at import, naming the head, with and without the weights."""
    import shutil
    make().save_pretrained(tmp_path / "ckpt")
    (tmp_path / "cfg").mkdir()
    shutil.copy(tmp_path / "ckpt" / "config.json", tmp_path / "cfg")
    for d in ("ckpt", "cfg"):
        user_error(cli("import", tmp_path / d, "-o", tmp_path / "s.yaml"),
                   f'architectures = ["{arch}"] is not supported: graphc lacks the {arch} head', hint="graphc imports")
        assert not (tmp_path / "s.yaml").exists()


def test_line_breaks_in_names_and_settings_stay_in_comments(tmp_path):
    """The spec's comments quote the checkpoint's path and its generation
    settings; a line break in either ended the comment and the rest became YAML
    (a duplicate key, or a key the user never wrote). Both are shown escaped."""
    import json
    import yaml
    ckpt = tmp_path / "ckpt\nname: injected"
    ckpt.mkdir()
    torch.manual_seed(0)
    _gpt2(bos_token_id=1, eos_token_id=2).save_pretrained(ckpt)
    gen = json.loads((ckpt / "generation_config.json").read_text())
    gen["temperature"] = "0.7\nlayers: []"
    (ckpt / "generation_config.json").write_text(json.dumps(gen))
    spec = tmp_path / "spec.yaml"
    rc, _, err = cli("import", ckpt, "-o", spec)
    assert rc == 0, err
    data = yaml.safe_load(spec.read_text())
    assert data["name"] == "gpt2" and data["layers"], data.get("layers")
    rc, _, err = cli("build", spec, "--weights", ckpt, "-o", tmp_path / "m.onnx")
    assert rc == 0, err


def _differing_copy(copy: str, source: str, bias: tuple[str, str] | None = None):
    def edit(ckpt):
        from safetensors.numpy import load_file, save_file
        t = load_file(ckpt / "model.safetensors")
        rng = np.random.default_rng(3)
        t[copy] = (t[source] + 0.2 * rng.standard_normal(t[source].shape)).astype(np.float32)
        if bias is not None:        # BERT's decoder bias: an equal copy of cls.predictions.bias
            t[bias[0]] = t[bias[1]].copy()
        save_file(t, ckpt / "model.safetensors", metadata={"format": "pt"})
    return edit


@pytest.mark.parametrize("case, make, edit", [
    ("gpt2", lambda: _gpt2(), _differing_copy("lm_head.weight", "transformer.wte.weight")),
    ("llama", lambda: _llama(tie_word_embeddings=True), _differing_copy("lm_head.weight", "model.embed_tokens.weight")),
    ("bert", lambda: _bert_mlm(), _differing_copy("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight",
                                                  ("cls.predictions.decoder.bias", "cls.predictions.bias"))),
    ("distilbert", lambda: _distilbert_mlm(),
     _differing_copy("vocab_projector.weight", "distilbert.embeddings.word_embeddings.weight")),
    ("bart", lambda: _bart(), _differing_copy("lm_head.weight", "model.shared.weight")),
    ("bart-encoder-table", lambda: _bart(), _differing_copy("model.encoder.embed_tokens.weight", "model.shared.weight")),
    ("t5-encoder-table", lambda: _t5(), _differing_copy("encoder.embed_tokens.weight", "shared.weight")),
])
def test_a_stored_head_that_differs_from_its_tied_table_is_loaded(case, make, edit, tmp_path):
    """tie_word_embeddings true, but the file stores the head with other values
    than the embedding (a fine-tune that trained them apart, a hand-edited
    config). transformers 5 then does not tie them and the head uses its own
    tensor; the import ignored it as a tied copy (wrong logits, no error).
    The same holds for BART's and T5's stored encoder/decoder tables."""
    torch.manual_seed(0)
    model = make()
    _perturb(model)
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    edit(ckpt)
    model = type(model).from_pretrained(ckpt, dtype=torch.float32).eval()   # the oracle: what transformers loads
    _check_parity(case, model, ckpt, "logits", tmp_path)
