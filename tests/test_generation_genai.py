"""genai_config.json: a decoder-only bundle runs unchanged in onnxruntime-genai (an optional
extra: pip install 'graphc[genai]'), giving the ids Hugging Face transformers' generate()
gives for the same weights (batch 1: onnxruntime-genai's left-padded batches are wrong on
its own models too, docs/generation.md)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from graphc.generation.genai_config import genai_config
from helpers import ROOT, cli

import generation_toy as toy


def test_genai_config_maps_the_bundle():
    cfg = toy.config(eos=[2, 5])
    g = genai_config(cfg)
    dec = g["model"]["decoder"]
    assert g["model"]["type"] == "decoder" and g["model"]["vocab_size"] == toy.V
    assert dec["filename"] == "decoder.onnx" and dec["num_hidden_layers"] == 1
    assert (dec["num_key_value_heads"], dec["head_size"]) == (1, toy.E)
    assert dec["inputs"]["past_key_names"] % 0 == cfg["cache"][0]["past_key"]
    assert dec["outputs"]["present_value_names"] % 0 == cfg["cache"][0]["present_value"]
    assert g["model"]["eos_token_id"] == [2, 5] and g["model"]["pad_token_id"] == toy.PAD
    assert g["model"]["context_length"] == toy.P and g["search"]["past_present_share_buffer"] is False


def test_query_heads_from_the_cache_entries():
    """num_attention_heads is the layer's query heads (written per cache entry), not its kv heads:
    bundles before the entries carried it fall back to the kv-head count."""
    cfg = toy.config()
    assert genai_config(cfg)["model"]["decoder"]["num_attention_heads"] == 1
    cfg["cache"] = [dict(cfg["cache"][0], heads=4)]
    dec = genai_config(cfg)["model"]["decoder"]
    assert (dec["num_attention_heads"], dec["num_key_value_heads"], dec["hidden_size"]) == (4, 1, 4 * toy.E)


def test_no_genai_config_where_genai_cannot_run_it():
    assert genai_config(toy.config(architecture="encoder-decoder")) is None
    two = toy.config()
    two["cache"] = two["cache"] + [dict(two["cache"][0], kv_heads=2)]       # layers differ in shape
    assert genai_config(two) is None
    renamed = toy.config()
    renamed["cache"] = [dict(renamed["cache"][0], past_key="k0")]         # not genai's %d template
    assert genai_config(renamed) is None


@pytest.mark.parametrize("layout", ["concat", "shared"])
def test_bundle_runs_in_onnxruntime_genai_like_transformers(tmp_path, layout):
    """shared: --target ort --cache-layout shared, run by genai with its shared buffer
    (past_present_share_buffer: true), as it runs its own models."""
    og = pytest.importorskip("onnxruntime_genai")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    sys.path.insert(0, str(ROOT / "tools"))
    import gen_models as gm
    torch.manual_seed(0)
    model = gm.randomize(transformers.LlamaForCausalLM(gm.hf_llama(**gm.LLAMA_TINY)).eval(), 0.2)
    spec = tmp_path / "llama.yaml"
    spec.write_text(gm.LLAMA_SPEC)
    np.savez(tmp_path / "w.npz", **gm.llama_weights(model))
    layout_args = ["--target", "ort", "--cache-layout", "shared"] if layout == "shared" else []
    rc, _, err = cli("build", spec, "--weights", tmp_path / "w.npz", "--kv-cache", *layout_args, "-o", tmp_path / "b")
    assert rc == 0, err
    cfg = json.loads((tmp_path / "b" / "genai_config.json").read_text())
    assert cfg == genai_config(json.loads((tmp_path / "b" / "graphc_generation.json").read_text()))
    assert cfg["search"]["past_present_share_buffer"] is (layout == "shared")
    hf, dec = model.config, cfg["model"]["decoder"]       # the model's facts, GQA: 4 query heads over 2 kv heads
    assert (dec["num_attention_heads"], dec["num_key_value_heads"], dec["head_size"], dec["hidden_size"]) == (
        hf.num_attention_heads, hf.num_key_value_heads, hf.hidden_size // hf.num_attention_heads, hf.hidden_size)
    assert (cfg["model"]["context_length"], cfg["model"]["eos_token_id"], cfg["model"]["pad_token_id"],
            cfg["model"]["bos_token_id"]) == (hf.max_position_embeddings, hf.eos_token_id, hf.pad_token_id,
                                              hf.bos_token_id)
    prompt = [5, 9, 13, 7, 21]
    with torch.no_grad():
        want = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, 5, dtype=torch.long),
                              generation_config=transformers.GenerationConfig(
                                  do_sample=False, max_new_tokens=16, eos_token_id=[2, 3], pad_token_id=0))
    want = want[0, 5:].tolist()
    m = og.Model(str(tmp_path / "b"))
    params = og.GeneratorParams(m)
    params.set_search_options(max_length=len(prompt) + 16, do_sample=False)
    gen = og.Generator(m, params)
    gen.append_tokens(np.array([prompt], dtype=np.int32))
    got = []
    while not gen.is_done():
        gen.generate_next_token()
        got.append(int(gen.get_next_tokens()[0]))
    assert got == want and len(set(want)) > 4
