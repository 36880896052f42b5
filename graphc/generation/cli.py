"""``graphc generate DIR``: the command line of graphc.generation.api.

Everything is checked before the first session runs (the bundle, the ids, the
flags, the output path), and the output file is written atomically, so a
mistake is exit 2 with a hint and nothing half-written."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import GraphcError        # numpy and onnxruntime load only when the command runs


def _ids_arg(text: str, flag: str):
    """'5,9,13' (one row) or a .npy file of [batch, len] ids."""
    if text.lower().endswith(".npy"):
        from ..runtime.session import _load_array
        return _load_array(text, flag)
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise GraphcError(f"{flag} expects comma-separated integer ids (e.g. 5,9,13) or a .npy file, got '{text[:60]}'") from None
    if not ids:
        raise GraphcError(f"{flag}: no ids given")
    return [ids]


def _early_stopping(text: str):
    t = text.strip().lower()
    if t in ("true", "1", "yes"):
        return True
    if t in ("false", "0", "no"):
        return False
    if t == "never":
        return "never"
    raise argparse.ArgumentTypeError(f"expected true, false or never, got '{text}'")


def add_parser(sub) -> None:
    g = sub.add_parser("generate", help="generate token ids with a bundle built by 'graphc build --kv-cache'")
    g.add_argument("bundle", metavar="DIR", help="a bundle directory (graphc build SPEC --kv-cache -o DIR)")
    g.add_argument("--input-ids", metavar="IDS", help="decoder-only prompt: 5,9,13 or a .npy [batch, len] "
                                                      "left-padded with the bundle's pad id")
    g.add_argument("--src-ids", metavar="IDS", help="encoder-decoder source: 5,9,13 or a .npy [batch, len] "
                                                    "padded with pad")
    g.add_argument("--text", action="append", default=[], metavar="TEXT",
                   help="prompt (or source) text, tokenized with --tokenizer; repeat for a batch")
    g.add_argument("--tokenizer", metavar="tokenizer.json",
                   help="a Hugging Face tokenizers file: encode --text, print decoded text (pip install 'graphc[text]')")
    g.add_argument("--max-new-tokens", type=int, default=20, metavar="N", help="at most N new tokens per row (default 20)")
    g.add_argument("--temperature", type=float, default=None, metavar="T", help="sample, scores divided by T")
    g.add_argument("--top-k", type=int, default=None, metavar="K", help="sample from the K most likely tokens")
    g.add_argument("--top-p", type=float, default=None, metavar="P",
                   help="sample from the smallest set of tokens with probability >= P")
    g.add_argument("--seed", type=int, default=None, help="seed for sampling (repeatable draws)")
    g.add_argument("--num-beams", type=int, default=1, metavar="N", help="beam search with N beams")
    g.add_argument("--length-penalty", type=float, default=None, metavar="P",
                   help="beam search: finished hypotheses ranked by score / length**P (default 1)")
    g.add_argument("--early-stopping", type=_early_stopping, default=None, metavar="true|false|never",
                   help="beam search: when a row stops (transformers' meaning; default false)")
    g.add_argument("--num-return-sequences", type=int, default=1, metavar="N",
                   help="N sequences per input row (sampling: N draws; beam search: the N best, N <= --num-beams); "
                        "printed and written grouped by row")
    g.add_argument("--output", "-o", metavar="ids.npy|ids.json", help="also write the generated ids here")
    g.add_argument("--threads", type=int, default=2, metavar="N", help="ONNX Runtime intra-op threads (default 2)")
    g.set_defaults(fn=cmd_generate)


def _tokenizer(path: str):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise GraphcError("--tokenizer needs the 'tokenizers' library",
                          hint="pip install 'graphc[text]' (or pip install tokenizers)") from None
    if not Path(path).is_file():
        raise GraphcError(f"tokenizer file not found: {path}")
    try:
        return Tokenizer.from_file(path)
    except Exception as exc:            # the library raises its own exception types
        raise GraphcError(f"cannot read tokenizer {path}: {str(exc)[:200]}") from None


def cmd_generate(args) -> int:
    import numpy as np
    from .api import CLI_NAMES, Generator, check_settings
    from .bundle import load_bundle
    check_settings(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, seed=args.seed, length_penalty=args.length_penalty,
                   early_stopping=args.early_stopping, num_return_sequences=args.num_return_sequences,
                   names=CLI_NAMES)
    if args.threads is not None and not 0 <= args.threads <= 1024:
        raise GraphcError(f"--threads must be between 0 and 1024, got {args.threads}")
    out = args.output
    if out is not None:
        if Path(out).suffix.lower() not in (".npy", ".json"):
            raise GraphcError(f"--output {out}: expected a .npy or .json file name")
        from ..compiler import check_output_path
        own = [Path(args.bundle) / n for n in ("graphc_generation.json", "genai_config.json")]   # the bundle's own
        check_output_path(out, [args.input_ids, args.src_ids, args.tokenizer, *own])
    bundle = load_bundle(args.bundle)
    tok = _tokenizer(args.tokenizer) if args.tokenizer else None
    if args.text and tok is None:
        raise GraphcError("--text needs --tokenizer tokenizer.json")
    if args.text and (args.input_ids is not None or args.src_ids is not None):
        raise GraphcError("give either --text or --input-ids/--src-ids, not both")
    input_ids = _ids_arg(args.input_ids, "--input-ids") if args.input_ids is not None else None
    src_ids = _ids_arg(args.src_ids, "--src-ids") if args.src_ids is not None else None
    if args.text:
        rows = [e.ids for e in tok.encode_batch(args.text)]
        width = max(len(r) for r in rows)
        pad = bundle.pad
        if bundle.encoder_decoder:
            src_ids = [r + [pad] * (width - len(r)) for r in rows]
        else:
            input_ids = [[pad] * (width - len(r)) + r for r in rows]
    gen = Generator(bundle, args.threads)
    ids = gen.generate_named(CLI_NAMES, input_ids, src_ids, max_new_tokens=args.max_new_tokens,
                             num_beams=args.num_beams, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, seed=args.seed, length_penalty=args.length_penalty,
                             early_stopping=args.early_stopping, num_return_sequences=args.num_return_sequences)
    if out is not None:
        from ..atomic_write import write_atomic
        if out.lower().endswith(".json"):
            write_atomic(out, json.dumps(ids.tolist()) + "\n")
        else:
            write_atomic(out, lambda f: np.save(f, ids))
    for row in ids:
        line = ",".join(str(int(t)) for t in row)
        if tok is not None:
            real = [int(t) for t in _until_eos(row, bundle.eos)]
            line += "\t" + tok.decode(real)
        sys.stdout.write(line + "\n")
    return 0


def _until_eos(row, eos):
    for t in row:
        if int(t) in eos:
            return
        yield t
