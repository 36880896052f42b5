"""The ``graphc import`` command (wired in graphc.cli)."""
from __future__ import annotations

import sys


def add_parser(sub) -> None:
    im = sub.add_parser("import", help="write a spec for a Hugging Face checkpoint directory "
                        "(config.json + model.safetensors)")
    im.add_argument("directory", help="what save_pretrained wrote")
    im.add_argument("-o", "--output", metavar="SPEC.yaml", help="the spec to write (default: stdout)")
    im.set_defaults(fn=cmd_import)


def cmd_import(args) -> int:
    from . import import_checkpoint
    text = import_checkpoint(args.directory)
    if args.output:
        from ..compiler import check_output_path
        from ..atomic_write import write_atomic
        from pathlib import Path
        # never over the checkpoint's files (config, weights, index, shards)
        check_output_path(args.output, [args.directory, Path(args.directory) / "config.json"])
        write_atomic(args.output, text)
        print(f"wrote {args.output}; build it with: graphc build {args.output} --weights {args.directory} "
              f"-o model.onnx", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
