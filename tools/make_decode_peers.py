"""Build the models tools/profile_decode.py compares, from one random LLaMA checkpoint.

    python tools/make_decode_peers.py OUT [--genai-python /work/venv-genai/bin/python]

Writes under OUT: ``hf/`` (a random ``LlamaForCausalLM`` of the generation issue's
benchmark size, weights N(0, 0.05^2), norms 1 + N(0, 0.05^2), saved with
``save_pretrained``, plus a word-level tokenizer the genai builder wants), ``llama.yaml``
(``graphc import`` of it), the graphc bundles
``graphc/`` (float32), ``graphc_int8/`` (``--quantize int8``, head included),
``graphc_ort_int8/`` (``--quantize int8 --target ort``, head included), ``graphc_shared/`` and
``graphc_shared_int8/`` (the same two with ``--target ort --cache-layout shared``), and with
``--genai-python`` onnxruntime-genai's builder outputs ``genai_fp32/``, ``genai_int8/``,
``genai_int4/`` for the same checkpoint. Then, for example:

    python tools/profile_decode.py OUT/graphc OUT/graphc_int8 OUT/graphc_ort_int8 OUT/genai_fp32 \\
        OUT/genai_int8 OUT/genai_int4 --past 39,151 --reps 60 --error-vs graphc

Needs torch and transformers (the reference side; graphc itself never imports them).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

DIMS = dict(vocab=32000, d_model=512, heads=8, kv_heads=4, layers=8, d_ff=1376, max_len=2048)


def hf_model(out: Path, seed: int) -> None:
    import torch
    import transformers
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=DIMS["vocab"], hidden_size=DIMS["d_model"],
                                   intermediate_size=DIMS["d_ff"], num_hidden_layers=DIMS["layers"],
                                   num_attention_heads=DIMS["heads"], num_key_value_heads=DIMS["kv_heads"],
                                   max_position_embeddings=DIMS["max_len"], rms_norm_eps=1e-6, rope_theta=10000.0,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():       # std 0.05: at transformers' 0.02 greedy decoding collapses to one token
        for name, p in model.named_parameters():
            p.copy_(1 + 0.05 * torch.randn_like(p) if "norm" in name else 0.05 * torch.randn_like(p))
    model.save_pretrained(out)
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    Tokenizer(WordLevel({f"w{i}": i for i in range(DIMS["vocab"])}, unk_token="w0")).save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "w0", "pad_token": "w0"}))


def graphc(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "graphc", *args], check=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--genai-python", default=None, help="a Python with onnxruntime-genai's model builder")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    hf = out / "hf"
    hf_model(hf, a.seed)
    spec = out / "llama.yaml"
    graphc("import", str(hf), "-o", str(spec))
    text = spec.read_text()             # the import writes the generation: section (tokens_mask = attention_mask)
    graphc("build", str(spec), "--weights", str(hf), "--kv-cache", "-o", str(out / "graphc"))
    quant = out / "llama_int8.yaml"
    quant.write_text(text.replace("\ngeneration:", "\nquantize: {mode: int8, head: true}\ngeneration:"))
    graphc("build", str(quant), "--weights", str(hf), "--kv-cache", "-o", str(out / "graphc_int8"))
    graphc("build", str(quant), "--weights", str(hf), "--kv-cache", "--target", "ort", "-o", str(out / "graphc_ort_int8"))
    shared = ["--kv-cache", "--target", "ort", "--cache-layout", "shared"]
    graphc("build", str(spec), "--weights", str(hf), *shared, "-o", str(out / "graphc_shared"))
    graphc("build", str(quant), "--weights", str(hf), *shared, "-o", str(out / "graphc_shared_int8"))
    if a.genai_python:
        for precision in ("fp32", "int8", "int4"):
            subprocess.run([a.genai_python, "-m", "onnxruntime_genai.models.builder", "-i", str(hf),
                            "-o", str(out / f"genai_{precision}"), "-p", precision, "-e", "cpu",
                            "-c", str(out / "genai_cache")], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
