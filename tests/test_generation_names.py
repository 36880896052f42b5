"""A generation error names what its reader typed: the Python API's argument
names (``max_new_tokens=``) from graphc.generate / Generator.generate, the
CLI's flags (``--max-new-tokens``) from `graphc generate`. Both are checked by
the same code (graphc.generation.api), so each case is run both ways."""
from __future__ import annotations

import re

import pytest

import graphc
from graphc.errors import GraphcError

import generation_toy as toy
from helpers import cli, user_error


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return toy.write_bundle(tmp_path_factory.mktemp("toy") / "bundle")


LONG = [3] * (toy.P - 2)

# (Python keywords, Python message + hint; CLI args, CLI message + hint)
CASES = [
    (dict(input_ids=[3], max_new_tokens=0), "max_new_tokens must be between 1", None,
     ["--input-ids", "3", "--max-new-tokens", "0"], "--max-new-tokens must be between 1", None),
    (dict(input_ids=LONG, max_new_tokens=4), "plus max_new_tokens=4 is longer", "use max_new_tokens=3 or less",
     ["--input-ids", ",".join(map(str, LONG)), "--max-new-tokens", "4"], "plus --max-new-tokens 4 is longer",
     "use --max-new-tokens 3 or less"),
    (dict(input_ids=[3], num_beams=2, temperature=0.5), "temperature cannot be combined with num_beams=2",
     "drop num_beams to sample",
     ["--input-ids", "3", "--num-beams", "2", "--temperature", "0.5"],
     "--temperature cannot be combined with --num-beams 2", "drop --num-beams to sample"),
    (dict(input_ids=[3], length_penalty=2.0), "length_penalty only apply to beam search", "add num_beams=N (N > 1)",
     ["--input-ids", "3", "--length-penalty", "2"], "--length-penalty only apply to beam search",
     "add --num-beams N (N > 1)"),
    (dict(input_ids=[3], seed=1), "seed only applies to sampling", "add temperature, top_k or top_p",
     ["--input-ids", "3", "--seed", "1"], "--seed only applies to sampling", "add --temperature, --top-k or --top-p"),
    (dict(input_ids=[3], top_p=1.5), "top_p must be in (0, 1]", None,
     ["--input-ids", "3", "--top-p", "1.5"], "--top-p must be in (0, 1]", None),
    (dict(input_ids=[3, toy.V]), f"input_ids: id {toy.V} at row 0", None,
     ["--input-ids", f"3,{toy.V}"], f"--input-ids: id {toy.V} at row 0", None),
    (dict(src_ids=[3]), "decoder-only model: give a prompt (input_ids)", None,
     ["--src-ids", "3"], "decoder-only model: give a prompt (--input-ids)", None),
    (dict(input_ids=[3], src_ids=[3]), "it takes input_ids, not src_ids", None,
     ["--input-ids", "3", "--src-ids", "3"], "it takes --input-ids, not --src-ids", None),
]


@pytest.mark.parametrize("kw, py_msg, py_hint, args, cli_msg, cli_hint", CASES, ids=range(len(CASES)))
def test_python_names_arguments_and_cli_names_flags(bundle, kw, py_msg, py_hint, args, cli_msg, cli_hint):
    gen = graphc.Generator(bundle)
    for call in (lambda: graphc.generate(bundle, **kw), lambda: gen.generate(**kw)):
        with pytest.raises(GraphcError, match=re.escape(py_msg)) as info:
            call()
        assert "--" not in info.value.message and "--" not in (info.value.hint or ""), str(info.value)
        if py_hint is not None:
            assert py_hint in info.value.hint
    user_error(cli("generate", bundle, *args), cli_msg, **({"hint": cli_hint} if cli_hint else {}))


def test_python_early_stopping_is_named_with_python_values(bundle):
    with pytest.raises(GraphcError, match=re.escape("early_stopping must be True, False or 'never', got 'sometimes'")):
        graphc.generate(bundle, [3], num_beams=2, early_stopping="sometimes")
