"""A weights file whose names differ from the spec's by one leading prefix (a bare
``nn.TransformerEncoder`` saved for a spec whose layer is called ``encoder``, or a
``DataParallel`` wrapper's ``module.``) loads by renaming, with a note; anything
less certain is still the usual error listing every mismatch."""
from __future__ import annotations


import numpy as np
import pytest

from graphc.weights import prefix_rewrite
from helpers import cli, ort_run, user_error

ENCODER = """graphc: 1
name: enc
dims: {batch: 2, seq: 5}
inputs:
  src: {dtype: float32, shape: [batch, seq, 16]}
layers:
  - name: encoder
    kind: transformer_encoder
    inputs: {x: src}
    layers: 2
    heads: 4
    d_ff: 32
outputs:
  memory: encoder
"""


def names(*items: str) -> dict:
    return dict.fromkeys(items, None)


SPEC_NAMES = names("encoder.layers.0.norm1.weight", "encoder.layers.0.norm1.bias", "encoder.layers.1.norm1.weight")


@pytest.mark.parametrize("file_names, rewrite", [
    # a bare module: the spec's layer name is missing
    (names("layers.0.norm1.weight", "layers.0.norm1.bias", "layers.1.norm1.weight"), ("", "encoder.")),
    # a DataParallel wrapper around a module held as `encoder`
    (names("module.encoder.layers.0.norm1.weight", "module.encoder.layers.0.norm1.bias",
           "module.encoder.layers.1.norm1.weight"), ("module.", "")),
    # the same module held under another attribute name
    (names("enc.layers.0.norm1.weight", "enc.layers.0.norm1.bias", "enc.layers.1.norm1.weight"), ("enc.", "encoder.")),
])
def test_a_uniform_prefix_difference_is_found(file_names, rewrite):
    assert prefix_rewrite(SPEC_NAMES, file_names) == rewrite


@pytest.mark.parametrize("file_names", [
    names(*SPEC_NAMES),                                                     # nothing to rename
    names("encoder.layers.0.norm1.weight", "layers.0.norm1.bias", "layers.1.norm1.weight"),   # some match as they are
    names("layers.0.norm1.weight", "layers.0.norm1.bias"),                 # one tensor short
    names("layers.0.norm1.weight", "layers.0.norm1.bias", "layers.1.norm1.weight", "layers.1.norm1.bias"),  # one extra
    names("layers.0.norm1.weight", "layers.0.norm1.bias", "layers.1.norm2.weight"),   # one name differs inside
    names("layers.0.norm1.weight", "other.0.norm1.bias", "layers.1.norm1.weight"),    # prefixes differ per tensor
    names("layers.0.norm1.weightx", "layers.0.norm1.bias", "layers.1.norm1.weight"),   # a suffix, not a prefix
    {},
])
def test_anything_short_of_a_whole_file_renaming_is_not_rewritten(file_names):
    assert prefix_rewrite(SPEC_NAMES, file_names) is None




@pytest.fixture
def encoder_spec(tmp_path):
    (p := tmp_path / "enc.yaml").write_text(ENCODER)
    return p


def _spec_weights(spec, tmp_path) -> dict[str, np.ndarray]:
    """Random weights under the spec's own names ('graphc params' lists them)."""
    from graphc.compiler import check_spec
    _, g = check_spec(spec)
    rng = np.random.default_rng(0)
    return {p.name: rng.standard_normal(p.type.concrete_shape()).astype(np.float32) * 0.3 for p in g.params()}


def test_a_bare_module_file_builds_the_same_model_with_a_note(encoder_spec, tmp_path):
    weights = _spec_weights(encoder_spec, tmp_path)
    assert all(n.startswith("encoder.") for n in weights)
    np.savez(named := tmp_path / "named.npz", **weights)
    np.savez(bare := tmp_path / "bare.npz", **{n[len("encoder."):]: a for n, a in weights.items()})
    rc, _, err = cli("build", encoder_spec, "--weights", named, "-o", tmp_path / "named.onnx")
    assert rc == 0 and "note" not in err
    rc, _, err = cli("build", encoder_spec, "--weights", bare, "-o", tmp_path / "bare.onnx")
    assert rc == 0, err
    assert f"graphc: note: the names in {bare} lack the prefix 'encoder.'" in err
    assert (tmp_path / "bare.onnx").read_bytes() == (tmp_path / "named.onnx").read_bytes()
    rc, _, err = cli("build", encoder_spec, "--weights", bare, "-o", tmp_path / "quiet.onnx", "-q")
    assert rc == 0 and err == ""


def test_a_file_that_only_partly_renames_is_still_an_error(encoder_spec, tmp_path):
    weights = _spec_weights(encoder_spec, tmp_path)
    bare = {n[len("encoder."):]: a for n, a in weights.items()}
    bare.pop("layers.1.norm2.bias")
    np.savez(w := tmp_path / "w.npz", **bare)
    err = user_error(cli("build", encoder_spec, "--weights", w, "-o", tmp_path / "o.onnx"),
                     ("missing: encoder.layers.1.norm2.bias [16]", "unexpected: layers.0.linear1.weight"))
    assert "hint: 23 of the spec's 24 parameters are in the file under names that lack the prefix 'encoder.'" in err
    assert not (tmp_path / "o.onnx").exists()


def test_unrelated_names_get_no_renaming_hint(encoder_spec, tmp_path):
    np.savez(w := tmp_path / "w.npz", **{f"fc{i}.weight": np.zeros(2, np.float32) for i in range(24)})
    err = user_error(cli("build", encoder_spec, "--weights", w, "-o", tmp_path / "o.onnx"), "do not match the spec's parameters",
                     hint="names follow torch state_dict conventions")
    assert "hint: names follow torch state_dict conventions" in err and "renam" not in err


@pytest.mark.parametrize("drop", ["layers.0.norm1.bias", "layers.1.linear2.weight"])
def test_one_missing_tensor_gets_no_renaming_hint(encoder_spec, tmp_path, drop):
    """Renamings count only missing parameters found under unused names: with one
    tensor missing, 'layers.0.' -> 'layers.1.' maps names onto parameters that
    are already in the file, which is no near miss (an earlier hint said so)."""
    weights = _spec_weights(encoder_spec, tmp_path)
    weights.pop("encoder." + drop)
    np.savez(w := tmp_path / "w.npz", **weights)
    err = user_error(cli("build", encoder_spec, "--weights", w, "-o", tmp_path / "o.onnx"), f"missing: encoder.{drop}")
    assert "hint: names follow torch state_dict conventions" in err and "renam" not in err


def test_a_part_under_a_wrapper_prefix_is_hinted(encoder_spec, tmp_path):
    weights = _spec_weights(encoder_spec, tmp_path)
    moved = {("model." + n if ".layers.1." in n else n): a for n, a in weights.items()}
    np.savez(w := tmp_path / "w.npz", **moved)
    err = user_error(cli("build", encoder_spec, "--weights", w, "-o", tmp_path / "o.onnx"), "do not match the spec's parameters")
    assert "hint: 12 of the spec's 24 parameters are in the file under names that carry the prefix 'model.'" in err


def test_a_bare_torch_encoder_state_dict_matches_torch(encoder_spec, tmp_path):
    """The independent check: torch's own module, its state_dict saved as it comes."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    for t in encoder.parameters():        # redraw: torch starts attention biases at zero
        torch.nn.init.normal_(t, std=0.3)
    np.savez(w := tmp_path / "bare.npz", **{k: v.detach().numpy() for k, v in encoder.state_dict().items()})
    rc, _, err = cli("build", encoder_spec, "--weights", w, "-o", model := tmp_path / "enc.onnx")
    assert rc == 0, err
    x = np.random.default_rng(1).standard_normal((2, 5, 16)).astype(np.float32)
    got = ort_run(model.read_bytes(), {"src": x})["memory"]
    with torch.inference_mode():
        want = encoder(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
