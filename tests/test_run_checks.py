"""`graphc run` refuses inputs that ONNX Runtime would answer with a kernel's
message or with silently wrong numbers: sizes past a position table, token ids
outside an embedding (ONNX Gather reads -1 as the last row), sequence lengths
past the time axis (or past 2**31, where the int32 cast wraps), dims written as
expressions that disagree, and --dim names the model does not have."""
from __future__ import annotations


import numpy as np
import pytest

from helpers import SPECS, cli, user_error


def spec(tmp_path, text: str):
    (p := tmp_path / "s.yaml").write_text("graphc: 1\n" + text)
    return p


def npy(tmp_path, name: str, arr, tag: str = "") -> str:
    """--input NAME=FILE for ``arr`` saved as NAME{tag}.npy."""
    np.save(p := tmp_path / f"{name}{tag}.npy", arr)
    return f"{name}={p}"


def refused(result, *needles: str, located=None) -> None:
    """A user error (helpers.user_error) holding every needle, refused by
    graphc before ONNX Runtime saw the input."""
    err = user_error(result, needles, located=located)
    assert "ONNX Runtime failed" not in err, err


POSITIONS = """dims: {batch: 2, seq: 5}
inputs: {x: {dtype: float32, shape: [batch, seq, 8]}}
layers:
  - {name: pe, kind: sinusoidal_pe, input: x, max_len: 8}
outputs: {y: pe}
"""


@pytest.mark.parametrize("seq,ok", [(8, True), (9, False)])
def test_a_sequence_past_the_position_table(tmp_path, seq, ok):
    result = cli("run", spec(tmp_path, POSITIONS), "--random", "--dim", f"seq={seq}")
    if ok:
        assert result[0] == 0, result[2]
    else:
        refused(result, "dim 'seq' is 9, but layer 'pe' accepts at most 8")


def test_rope_in_attention_records_its_limit_too(tmp_path):
    s = spec(tmp_path, POSITIONS.replace("kind: sinusoidal_pe, input: x, max_len: 8",
                                         "kind: multihead_attention, input: x, heads: 2, rope: half, rope_max_len: 8"))
    refused(cli("run", s, "--random", "--dim", "seq=12"), "layer 'pe' accepts at most 8")


TOKENS = """dims: {batch: 1, seq: 4}
inputs: {tokens: {dtype: int64, shape: [batch, seq]}}
layers:
  - {name: embed, kind: embedding, input: tokens, num_embeddings: 3, embedding_dim: 4}
outputs: {y: embed}
"""


@pytest.mark.parametrize("bad", [-1, 3])
def test_token_ids_outside_the_embedding(tmp_path, bad):
    s = spec(tmp_path, TOKENS)
    assert cli("run", s, "--input", npy(tmp_path, "tokens", np.array([[0, 1, 2, 2]]), "ok"))[0] == 0
    result = cli("run", s, "--input", npy(tmp_path, "tokens", np.array([[0, 1, 2, bad]])))
    refused(result, f"input 'tokens' has {bad} at [0, 3], outside [0, 3), the rows of layer 'embed'")


def test_a_declared_range_is_enforced(tmp_path):
    s = spec(tmp_path, TOKENS.replace("shape: [batch, seq]}", "shape: [batch, seq], range: [1, 3]}"))
    result = cli("run", s, "--input", npy(tmp_path, "tokens", np.array([[1, 2, 0, 1]])))
    refused(result, "input 'tokens' has 0 at [0, 2], outside the range [1, 3) its spec declares")


LSTM = """dims: {batch: 2, seq: 5}
inputs:
  x: {dtype: float32, shape: [batch, seq, 3]}
  lengths: {dtype: int64, shape: [batch]}
layers:
  - {name: rnn, kind: lstm, inputs: {x: x, lengths: lengths}, hidden_size: 4, batch_first: true}
outputs: {y: rnn.y}
"""


@pytest.mark.parametrize("lengths", [[6, 3], [2 ** 32 + 3, 3], [2 ** 40, 3]])
def test_lengths_past_the_time_axis(tmp_path, lengths):
    """2**32 + 3 used to run as length 3 (the int64 -> int32 cast wraps)."""
    s = spec(tmp_path, LSTM)
    x = npy(tmp_path, "x", np.zeros((2, 5, 3), np.float32))
    assert cli("run", s, "--input", x, "--input", npy(tmp_path, "lengths", np.array([5, 1]), "ok"))[0] == 0
    result = cli("run", s, "--input", x, "--input", npy(tmp_path, "lengths", np.array(lengths)))
    refused(result, f"input 'lengths' has {lengths[0]} at [0], outside 1..seq = 1..5, the time steps of layer 'rnn'")


EXPR = """dims: [batch, seq]
inputs:
  a: {dtype: float32, shape: [batch, seq * 2]}
  b: {dtype: float32, shape: [batch, seq]}
layers:
  - {name: s, kind: slice, input: a, axis: 1, start: 0, end: 1}
outputs: {y: s, z: b}
"""


def test_dims_written_as_expressions_must_agree(tmp_path):
    s = spec(tmp_path, EXPR)
    b = npy(tmp_path, "b", np.zeros((1, 3), np.float32))
    assert cli("run", s, "--input", npy(tmp_path, "a", np.zeros((1, 6), np.float32), "6"), "--input", b)[0] == 0
    result = cli("run", s, "--input", npy(tmp_path, "a", np.zeros((1, 4), np.float32), "4"), "--input", b)
    refused(result, "input 'a' has an axis of size 4, declared as", "which is 6 with seq = 3")


def test_an_expression_with_no_whole_solution(tmp_path):
    s = spec(tmp_path, EXPR.replace("  b: {dtype: float32, shape: [batch, seq]}\n", "").replace(", z: b", ""))
    result = cli("run", s, "--input", npy(tmp_path, "a", np.zeros((1, 5), np.float32), "5"))
    refused(result, "input 'a' has an axis of size 5", "no whole size of 'seq' gives that")


@pytest.mark.parametrize("command", ["run", "check", "info"])
def test_an_unknown_dim_name_is_an_error(tmp_path, command):
    extra = ["--random"] if command == "run" else []
    result = cli(command, SPECS / "mlp.yaml", *extra, "--dim", "BATCH=3")
    refused(result, "--dim BATCH: the model has no dim 'BATCH'", "batch")


def test_a_dim_that_contradicts_the_inputs(tmp_path):
    x = npy(tmp_path, "x", np.zeros((3, 784), np.float32))
    assert cli("run", SPECS / "mlp.yaml", "--input", x, "--dim", "batch=3")[0] == 0
    result = cli("run", SPECS / "mlp.yaml", "--input", x, "--dim", "batch=5")
    refused(result, "--dim batch=5, but the inputs give batch = 3")


MAXED = """dims: {batch: 2, seq: {example: 4, max: 6}}
inputs: {x: {dtype: float32, shape: [batch, seq, 8]}}
layers:
  - {name: a, kind: relu, input: x}
outputs: {y: a}
"""


def test_a_declared_dim_max_is_enforced(tmp_path):
    """`dims: {seq: {max: N}}` was parsed and never used."""
    s = spec(tmp_path, MAXED)
    refused(cli("check", s, "--dim", "seq=7"), "--dim seq=7: the spec declares seq at most 6")
    assert cli("run", s, "--random", "--dim", "seq=6")[0] == 0
    assert cli("build", s, "-q", "-o", model := tmp_path / "m.onnx")[0] == 0
    refused(cli("run", model, "--random", "--dim", "seq=7"), "dim 'seq' is 7, but the spec declares it at most 6")
