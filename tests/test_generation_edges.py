"""Generation at its edges (a reliability sweep of `graphc generate`, graphc.generate and
`graphc build --kv-cache`): each test failed before the fix it names.

The oracle is the hand-written toy bundle's numpy reference (tests/generation_toy.py:
the whole sequence recomputed from the math at every step, no cache), or the math of
the sampling limit itself; nothing is compared with graphc's own earlier output."""
from __future__ import annotations

import re

import numpy as np
import pytest

import graphc
from graphc.errors import GraphcError
from graphc.generation.search import Sampling, greedy_or_sample, warp

import generation_toy as toy
from helpers import TINY_DECODER, TINY_DECODER_GEN, cli, user_error


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return toy.write_bundle(tmp_path_factory.mktemp("toy") / "bundle")


def _reference_greedy(prompt: np.ndarray, n: int) -> list[int]:
    """argmax of the no-cache reference's last position, n times (stopping after eos)."""
    w, ids, out = toy.toy_weights(), prompt[None, :], []
    for _ in range(n):
        tok = int(toy.reference_logits(w, ids, np.ones_like(ids))[0, -1].argmax())
        out.append(tok)
        if tok == toy.EOS:
            break
        ids = np.concatenate([ids, [[tok]]], 1)
    return out


@pytest.mark.parametrize("length, new", [(toy.P, 1), (toy.P - 2, 3)])
def test_a_prompt_may_fill_the_position_table(bundle, length, new):
    """The last generated token is returned, never fed: a prompt of L tokens and N new
    ones reads positions 0 .. L + N - 2 (transformers' generate() accepts a GPT-2
    prompt of n_positions tokens and one new token). graphc refused L + N > table."""
    prompt = np.random.default_rng(length).integers(3, toy.V, length)
    got = graphc.generate(bundle, input_ids=prompt, max_new_tokens=new)[0]
    want = _reference_greedy(prompt, new)
    np.testing.assert_array_equal(got[:len(want)], want)


def test_one_new_token_past_the_table_is_refused(bundle, tmp_path):
    ids = ",".join(["3"] * (toy.P - 2))
    user_error(cli("generate", bundle, "--input-ids", ids, "--max-new-tokens", "4", "-o", tmp_path / "i.npy"),
               "longer than the model's 64 positions", hint="--max-new-tokens 3 or less")
    assert not (tmp_path / "i.npy").exists()


@pytest.mark.parametrize("over, message", [
    ({"kv_heads": 2}, "axis 1 is 1, the config says 2"),
    ({"head_dim": 4}, f"axis 3 is {toy.E}, the config says 4"),
])
def test_config_cache_dims_that_disagree_with_the_decoder(tmp_path, over, message):
    """Was an ORT INVALID_ARGUMENT at the first run: 'internal error', exit 1."""
    cache = [{**toy.config()["cache"][0], **over}]
    d = toy.write_bundle(tmp_path / "b", cache=cache)
    user_error(cli("generate", d, "--input-ids", "3,4"), ("does not match", message), hint="rebuild the bundle")


def test_a_run_the_decoder_refuses_is_a_user_error(tmp_path):
    """A config claiming more positions than the decoder's table (an edited or mixed-up
    bundle): ORT's Gather fails mid-run. Was 'internal error' with exit 1."""
    d = toy.write_bundle(tmp_path / "b", max_positions=1000)
    out = tmp_path / "ids.json"
    user_error(cli("generate", d, "--input-ids", ",".join(["3"] * 70), "--max-new-tokens", "2", "-o", out),
               ("ONNX Runtime failed running", "decoder.onnx"), hint="rebuild it")
    assert not out.exists()


class _Fixed:
    """A step model whose scores never change: the best token is 2, not 0."""

    logits = np.array([1.0, 3.0, 3.5, -2.0, 0.5], np.float32)

    def start(self, ids, mask):
        return np.repeat(self.logits[None], len(ids), 0)

    def step(self, tok):
        return np.repeat(self.logits[None], len(tok), 0)

    def reorder(self, index):
        pass


@pytest.mark.parametrize("temperature", [1e-40, 1e-45, 1e-320])
def test_a_tiny_temperature_samples_the_argmax(temperature):
    """softmax(s / T) tends to the argmax as T -> 0. These temperatures make s / T
    overflow float32 (or T round to 0): the softmax was inf - inf = NaN and every
    draw came out as id 0, silently."""
    ids = np.zeros((3, 1), np.int64)
    got = greedy_or_sample(_Fixed(), ids, np.ones_like(ids), max_new_tokens=50, eos=(), pad=0,
                           sampling=Sampling(temperature=temperature, seed=0))
    assert (got == 2).all()
    w = warp(_Fixed.logits[None], Sampling(temperature=temperature))
    assert not np.isnan(w).any() and w[0, 2] == 0 and np.isneginf(w[0, [0, 3, 4]]).all()


def test_a_tiny_temperature_on_the_cli_equals_greedy(bundle):
    rc, greedy, err = cli("generate", bundle, "--input-ids", "3,4,5", "--max-new-tokens", "8")
    assert rc == 0, err
    rc, cold, err = cli("generate", bundle, "--input-ids", "3,4,5", "--max-new-tokens", "8",
                        "--temperature", "1e-40", "--seed", "1")
    assert rc == 0, err
    assert cold == greedy and "RuntimeWarning" not in err


def test_kv_cache_build_refuses_an_onnx_file_name(tmp_path):
    """`-o model.onnx` out of habit made a directory named model.onnx."""
    out = tmp_path / "model.onnx"
    user_error(cli("build", "specs/gpt_decoder_only.yaml", "--kv-cache", "-o", out),
               "writes a bundle directory", hint=f"-o {tmp_path / 'model'}/")
    assert not out.exists()


@pytest.mark.parametrize("kw, message", [
    ({"temperature": "0.5"}, "(?<!-)temperature must be a number"),
    ({"top_p": True}, "top_p must be a number"),
    ({"num_beams": 2, "length_penalty": "x"}, "length_penalty must be a number"),
])
def test_python_settings_of_the_wrong_type(bundle, kw, message):
    """Were a TypeError/ValueError traceback (or True taken as 1.0)."""
    with pytest.raises(GraphcError, match=message):
        graphc.generate(bundle, input_ids=[3, 4], max_new_tokens=2, **kw)


def test_ids_beyond_int64_and_an_empty_prompt(bundle):
    """10**30 said 'rows of different lengths'; --input-ids '' said 'give a prompt'."""
    with pytest.raises(GraphcError, match="does not fit in int64"):
        graphc.generate(bundle, input_ids=[3, 10 ** 30])
    user_error(cli("generate", bundle, "--input-ids", "99999999999999999999999"), "does not fit in int64")
    user_error(cli("generate", bundle, "--input-ids", ""), "--input-ids: no ids given")
    # a uint64 or float array wrapped to a negative id in the cast (and warned) before
    for arr, shown in ((np.array([[3, 2 ** 63 + 5]], np.uint64), "9223372036854775813"),
                       (np.array([[3.0, 1e30]]), "1e+30")):
        with pytest.raises(GraphcError, match=re.escape(f"id {shown} does not fit in int64")):
            graphc.generate(bundle, input_ids=arr)


TINY_GEN = TINY_DECODER + TINY_DECODER_GEN


def test_rebuilding_a_bundle_keeps_the_files_the_user_added(tmp_path):
    """onnxruntime-genai reads tokenizer.json from the model directory, so users put it
    in the bundle; a rebuild replaced the directory and deleted it silently. Files a
    build writes are still not carried over (a stale encoder.onnx)."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_GEN)
    out = tmp_path / "bundle"
    rc, _, err = cli("build", spec, "--kv-cache", "-o", out)
    assert rc == 0, err
    (out / "tokenizer.json").write_text('{"mine": 1}')
    (out / "notes").mkdir()
    (out / "notes" / "a.txt").write_text("keep")
    (out / "encoder.onnx").write_bytes(b"stale")
    rc, _, err = cli("build", spec, "--kv-cache", "-o", out, "--seed", "3")
    assert rc == 0, err
    assert (out / "tokenizer.json").read_text() == '{"mine": 1}'
    assert (out / "notes" / "a.txt").read_text() == "keep"
    assert not (out / "encoder.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "tiny.yaml"]       # no temporary left


def test_shared_layout_beam_reorder_copies_only_the_written_columns(tmp_path):
    """Beam search reorders the shared buffers in place at every step; it copied the whole
    [beams, kv, prompt + max_new_tokens, d] buffer each time (20 ms a step on the LLaMA-like
    spec with --max-new-tokens 1000, as long as the step itself). The columns not written
    yet are the same (zeros) in every row, so only the written ones need to move: checked
    with a marker in an unwritten column, and the ids against the default layout's."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_GEN)
    for layout, extra in (("concat", []), ("shared", ["--target", "ort", "--cache-layout", "shared"])):
        rc, _, err = cli("build", spec, "--kv-cache", "-o", tmp_path / layout, *extra)
        assert rc == 0, err
    from graphc.generation.api import Generator
    shared = Generator(tmp_path / "shared")
    prompts = np.array([[0, 0, 5, 9], [7, 3, 11, 4]])
    for beams in (2, 3):
        want = graphc.generate(tmp_path / "concat", input_ids=prompts, max_new_tokens=6, num_beams=beams)
        np.testing.assert_array_equal(shared.generate(prompts, max_new_tokens=6, num_beams=beams), want)
    runner = shared.decoder
    runner.start(prompts, (np.cumsum(prompts != 0, 1) > 0).astype(np.int64), 50)
    runner.reorder(np.array([0, 0, 1, 1]))                       # prompts -> beams (new buffers)
    runner.step(np.array([5, 6, 7, 8]))
    marker = runner.cache[0]
    marker[1, :, 40] = 7.0                                      # beyond the 5 written columns
    runner.reorder(np.array([1, 0, 3, 2]))
    assert (marker[1, :, 40] == 7.0).all() and (marker[0, :, 40] == 0).all()


def test_output_over_the_bundles_own_config_is_refused(tmp_path):
    """-o BUNDLE/graphc_generation.json (a .json name, so accepted) overwrote the config
    with the ids and the bundle could not be loaded again."""
    d = toy.write_bundle(tmp_path / "b")
    before = (d / "graphc_generation.json").read_bytes()
    user_error(cli("generate", d, "--input-ids", "3,4", "-o", d / "graphc_generation.json"),
               "refusing to write the output over", hint="another output path")
    assert (d / "graphc_generation.json").read_bytes() == before


@pytest.mark.parametrize("penalty", ["1000", "-1000", "1e308"])
def test_a_length_penalty_that_overflows_float32_is_refused(bundle, penalty):
    """Finished beams are ranked by score / length ** penalty in float32 (transformers'
    rule): 2 ** 1e308 was a Python OverflowError ('internal error'), and 5 ** -1000
    rounds to 0, so every finished score became -inf and the row came back empty."""
    user_error(cli("generate", bundle, "--input-ids", "3,4", "--num-beams", "2", "--max-new-tokens", "5",
                   "--length-penalty", penalty), "--length-penalty", hint="between -49.7 and 49.7")


def test_the_largest_accepted_length_penalty_still_ranks(bundle):
    """At the bound (80 / ln(max_new_tokens)) length ** penalty stays a finite float32 and
    the search runs; the ids equal beam search with the same penalty on the reference."""
    from graphc.generation.search import beam_search
    ids = np.array([[3, 4, 5]])
    for penalty in (49.0, -49.0):
        got = graphc.generate(bundle, input_ids=ids, max_new_tokens=5, num_beams=2, length_penalty=penalty)
        want = beam_search(toy.ReferenceStepModel(toy.toy_weights()), ids, np.ones_like(ids), max_new_tokens=5,
                           eos=(toy.EOS,), pad=toy.PAD, num_beams=2, length_penalty=penalty)
        np.testing.assert_array_equal(got, want)
