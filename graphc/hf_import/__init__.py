"""``graphc import DIR``: a spec for a Hugging Face checkpoint directory.

One small module per model family writes a readable spec from config.json:
hyperparameters as named params (each with the config key it came from), the
built-in layer kinds, and a ``weights:`` map from the checkpoint's tensor names
to graphc's, so ``graphc build spec.yaml --weights DIR`` loads the checkpoint
with no renaming by the user. What graphc cannot reproduce (a model_type, a
config value) is refused by name, never approximated.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import GraphcError
from . import bart, bert, gpt2, llama, t5
from .common import read_config, tensor_names

FAMILIES = {
    "gpt2": gpt2.spec_text,
    "llama": llama.spec_text,
    "mistral": llama.spec_text,
    "bert": bert.spec_text,
    "distilbert": bert.distilbert_spec_text,
    "bart": bart.spec_text,
    "marian": bart.spec_text,
    "t5": t5.spec_text,
}
# the architectures (config.json's "architectures") each family's spec reproduces; a head
# not listed (question answering, token classification, ...) would be dropped from the spec
ARCHITECTURES = {
    "gpt2": ("GPT2Model", "GPT2LMHeadModel"),
    "llama": ("LlamaModel", "LlamaForCausalLM"),
    "mistral": ("MistralModel", "MistralForCausalLM"),
    "bert": ("BertModel", "BertForMaskedLM", "BertForSequenceClassification"),
    "distilbert": ("DistilBertModel", "DistilBertForMaskedLM"),
    "bart": ("BartModel", "BartForConditionalGeneration"),
    "marian": ("MarianModel", "MarianMTModel"),
    "t5": ("T5Model", "T5ForConditionalGeneration", "T5EncoderModel"),
}
# families people ask for, and what graphc lacks for each (so the error can say)
MISSING = {
    "mt5": "an importer (mT5 is T5 v1.1 with another vocabulary: not tested yet)",
    "roberta": "an importer (RoBERTa's positions start at padding_idx + 1)",
    "gpt_neox": "an importer (parallel attention + MLP residuals)",
    "qwen2": "an importer (biases on q/k/v but not on the output projection)",
}


def import_checkpoint(directory: str | Path) -> str:
    """The spec text for the checkpoint in ``directory`` (config.json, and the
    safetensors whose names the weight map uses, if present)."""
    cfg = read_config(directory)
    family = FAMILIES.get(cfg.model_type)
    if family is None:
        missing = MISSING.get(cfg.model_type, "an importer for this family")
        raise GraphcError(f"{cfg.path}: model_type '{cfg.model_type}' is not supported: graphc lacks {missing}",
                          hint="supported model types: " + ", ".join(sorted(FAMILIES)))
    archs = cfg.get("architectures")
    if isinstance(archs, list) and archs and not any(a in ARCHITECTURES[cfg.model_type] for a in archs):
        raise cfg.unsupported("architectures", archs, f"the {' / '.join(map(str, archs))} head",
                              hint=f"graphc imports {', '.join(ARCHITECTURES[cfg.model_type])}; for the base "
                                   "model's hidden states, import a checkpoint of the base model")
    quant = cfg.get("quantization_config")
    if quant is not None:
        # its tensors are packed integers and scales (qweight, qzeros ...), not the float matrices the map loads
        method = quant.get("quant_method", "?") if isinstance(quant, dict) else quant
        raise cfg.unsupported("quantization_config.quant_method", method, "a reader for pre-quantized checkpoints",
                              hint="import the float checkpoint the quantized one was made from; "
                                   "graphc build --quantize int8 quantizes it")
    names = tensor_names(cfg)
    return _align_comments(family(cfg, names, _comment_safe(str(directory))))


def _comment_safe(path: str) -> str:
    """The directory as the spec's comments show it: a name holding a line break
    (YAML also breaks lines at NEL, LS and PS) would end the comment and put the
    rest of the name into the spec as YAML; such a name is shown escaped."""
    if any(ord(c) < 32 or c in "\x7f\x85\u2028\u2029" for c in path):
        return ascii(path)
    return path


def _align_comments(text: str) -> str:
    """Trailing comments of short lines start in one column, so the params read
    as a table (the family modules write them with any spacing)."""
    import re
    out = []
    for line in text.splitlines():
        m = re.match(r"^(\s*[^#\s].*?\S)\s{2,}(# .*)$", line)
        if m and len(m.group(1)) < 36:
            line = m.group(1).ljust(36) + m.group(2)
        elif m:
            line = m.group(1) + "   " + m.group(2)
        out.append(line)
    return "\n".join(out) + "\n"


__all__ = ["import_checkpoint", "FAMILIES"]
