"""``graphc.generate``: decode with a bundle, from Python.

Inputs are checked here, before any session runs, so that a bad id, an
over-long prompt or a contradictory setting is a GraphcError with a hint
(exit 2 from the CLI), never an ORT failure half way through.

Padding conventions (the same as transformers derives them):
- decoder-only prompts are *left*-padded with ``pad``: a row's leading ``pad``
  ids are padding, everything after the first other id is prompt (so a prompt
  may contain ``pad`` itself, e.g. when pad == eos);
- encoder-decoder sources: every id equal to ``pad`` is padding.
The result holds only the generated ids, ``[batch, n]`` with n <= max_new_tokens;
after a row's eos the row holds ``pad``.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import GraphcError
from .bundle import Bundle, load_bundle
from .search import Sampling, beam_search, greedy_or_sample

DEFAULT_THREADS = 2
MAX_NEW_TOKENS_LIMIT = 1 << 20


class Names:
    """How a message names a setting: ``graphc generate`` has flags
    (``--max-new-tokens 5``), a Python caller has arguments (``max_new_tokens=5``);
    an error should name what its reader typed. ``names("max_new_tokens")``,
    ``names("max_new_tokens", 5)``; settings are given by their Python name."""

    def __init__(self, cli: bool):
        self.cli = cli

    def __call__(self, name: str, *value) -> str:
        if self.cli:
            flag = "--" + name.replace("_", "-")
            return f"{flag} {value[0]}" if value else flag
        return f"{name}={value[0]}" if value else name


CLI_NAMES, PYTHON_NAMES = Names(cli=True), Names(cli=False)


def as_id_rows(ids, what: str) -> np.ndarray:
    """A list, a list of lists or an integer array -> int64 [batch, len]."""
    try:
        arr = np.asarray(ids)
    except ValueError:
        raise GraphcError(f"{what}: rows of different lengths; pad them to one length with the bundle's pad id") from None
    if arr.dtype == object:
        if arr.ndim in (1, 2) and all(isinstance(v, (int, np.integer)) for v in arr.ravel()):
            raise GraphcError(f"{what}: id {max(arr.ravel(), key=abs)} does not fit in int64"[:160])
        raise GraphcError(f"{what}: rows of different lengths; pad them to one length with the bundle's pad id")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise GraphcError(f"{what}: expected [batch, length] token ids, got shape {list(arr.shape)}")
    if arr.size == 0:
        raise GraphcError(f"{what}: no token ids (shape {list(arr.shape)})")
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        if np.abs(arr).max() >= 2.0 ** 63:              # the cast would wrap: name the id the user gave
            raise GraphcError(f"{what}: id {np.abs(arr).max():g} does not fit in int64")
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise GraphcError(f"{what}: token ids must be integers, got {arr.dtype}")
    if arr.dtype.kind == "u" and int(arr.max()) > np.iinfo(np.int64).max:
        raise GraphcError(f"{what}: id {int(arr.max())} does not fit in int64")
    return arr.astype(np.int64)


class Generator:
    """A loaded bundle (its ONNX Runtime sessions kept between calls).

    One Generator may serve several threads at once (a server's request
    handlers): each ``generate`` call decodes with its own copy of the decoder's
    per-call state (caches, mask, encoder outputs) over the shared sessions, whose
    ``run`` ONNX Runtime allows concurrently. A call that raised leaves nothing
    behind, so the Generator stays usable."""

    def __init__(self, bundle: str | os.PathLike | Bundle, threads: int | None = DEFAULT_THREADS):
        from .runner import DecoderRunner, EncoderRunner
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.decoder = DecoderRunner(self.bundle, threads)
        self.encoder = EncoderRunner(self.bundle, threads) if self.bundle.encoder_decoder else None

    def _check_ids(self, arr: np.ndarray, what: str) -> None:
        v = self.bundle.vocab_size
        bad = (arr < 0) | (arr >= v)
        if bad.any():
            r, c = map(int, np.argwhere(bad)[0])
            raise GraphcError(f"{what}: id {int(arr[r, c])} at row {r}, position {c} is outside the vocabulary "
                              f"[0, {v})", hint=f"the model's vocab_size is {v}")

    def generate(self, input_ids=None, src_ids=None, *, max_new_tokens: int = 20, num_beams: int = 1,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, length_penalty: float | None = None,
                 early_stopping: bool | str | None = None, num_return_sequences: int = 1) -> np.ndarray:
        """Decode ``input_ids`` (decoder-only) or ``src_ids`` (encoder-decoder); the
        arguments and the result are graphc.generate's (int64 [batch * num_return_sequences,
        n], new ids only)."""
        return self.generate_named(PYTHON_NAMES, input_ids, src_ids, max_new_tokens=max_new_tokens,
                                   num_beams=num_beams, temperature=temperature, top_k=top_k, top_p=top_p,
                                   seed=seed, length_penalty=length_penalty, early_stopping=early_stopping,
                                   num_return_sequences=num_return_sequences)

    def generate_named(self, names: Names, input_ids=None, src_ids=None, *, max_new_tokens: int = 20,
                       num_beams: int = 1, temperature: float | None = None, top_k: int | None = None,
                       top_p: float | None = None, seed: int | None = None, length_penalty: float | None = None,
                       early_stopping: bool | str | None = None, num_return_sequences: int = 1) -> np.ndarray:
        """``generate``, its errors naming the settings as ``names`` does (the CLI: its flags)."""
        b = self.bundle
        sampling = check_settings(max_new_tokens=max_new_tokens, num_beams=num_beams, temperature=temperature,
                                  top_k=top_k, top_p=top_p, seed=seed, length_penalty=length_penalty,
                                  early_stopping=early_stopping, num_return_sequences=num_return_sequences,
                                  names=names)
        src_name, input_name = names("src_ids"), names("input_ids")
        if b.encoder_decoder:
            if src_ids is None:
                raise GraphcError(f"this bundle is an encoder-decoder model: give the source ids ({src_name})")
            if input_ids is not None:
                raise GraphcError(f"this bundle is an encoder-decoder model: it takes {src_name}, not {input_name}",
                                  hint="the decoder starts from the bundle's decoder_start id")
            src = as_id_rows(src_ids, src_name)
            self._check_ids(src, src_name)
            if (src == b.pad).all(axis=1).any():
                raise GraphcError(f"{src_name}: row {int(np.argmax((src == b.pad).all(axis=1)))} is all padding")
            self._check_length(src.shape[1], 1, "source", names)
            self._check_length(1, max_new_tokens, "decoder start token", names)
            decoder = self.decoder.for_one_call()
            decoder.set_fixed(self.encoder(src))
            ids = np.full((src.shape[0], 1), b.decoder_start, dtype=np.int64)
            mask = np.ones_like(ids)
        else:
            if input_ids is None:
                raise GraphcError(f"this bundle is a decoder-only model: give a prompt ({input_name})")
            if src_ids is not None:
                raise GraphcError(f"this bundle is a decoder-only model: it takes {input_name}, not {src_name}")
            ids = as_id_rows(input_ids, input_name)
            self._check_ids(ids, input_name)
            mask = (np.cumsum(ids != b.pad, axis=1) > 0).astype(np.int64)   # leading pads are padding
            empty = ~mask.any(axis=1)
            if empty.any():
                raise GraphcError(f"{input_name}: row {int(np.argmax(empty))} is all padding (pad id {b.pad})")
            self._check_length(int(mask.sum(axis=1).max()), max_new_tokens, "prompt", names)
            decoder = self.decoder.for_one_call()
            decoder.set_fixed({})
        common = dict(max_new_tokens=max_new_tokens, eos=b.eos, pad=b.pad, num_return_sequences=num_return_sequences)
        model = _WithCapacity(decoder, max_new_tokens)
        if num_beams > 1:
            return beam_search(model, ids, mask, num_beams=num_beams,
                               length_penalty=1.0 if length_penalty is None else float(length_penalty),
                               early_stopping=False if early_stopping is None else early_stopping, **common)
        return greedy_or_sample(model, ids, mask, sampling=sampling, **common)

    def _check_length(self, length: int, new: int, what: str, names: Names) -> None:
        """The decoder reads positions 0 .. length + new - 2: the last new token is
        returned, never fed back (transformers' generate() accepts a prompt of the
        full table and one new token the same way)."""
        most = self.bundle.max_positions
        if most is None:
            return
        if length > most:
            raise GraphcError(f"the {what} has {length} tokens; the model's positions go up to {most}",
                              hint=f"shorten it to at most {most} tokens")
        if length + new - 1 > most:
            raise GraphcError(f"the {what} ({length} token{'s' if length != 1 else ''}) plus "
                              f"{names('max_new_tokens', new)} is longer than the model's {most} positions",
                              hint=f"use {names('max_new_tokens', most - length + 1)} or less")


class _WithCapacity:
    """Passes the number of steps ahead to DecoderRunner.start (one mask buffer)."""

    def __init__(self, runner, capacity):
        self.runner, self.capacity = runner, capacity

    def start(self, ids, mask):
        return self.runner.start(ids, mask, self.capacity)

    def step(self, tokens):
        return self.runner.step(tokens)

    def reorder(self, index):
        self.runner.reorder(index)


def check_settings(*, max_new_tokens, num_beams, temperature, top_k, top_p, seed, length_penalty,
                   early_stopping, num_return_sequences=1, names: Names = PYTHON_NAMES) -> Sampling | None:
    """Settings that contradict each other or are out of range -> GraphcError,
    naming them as ``names`` does. Returns the Sampling to use, or None for
    greedy / beam search."""
    def integer(v, flag):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise GraphcError(f"{flag} must be an integer, got {v!r}")
        return int(v)
    def real(v, flag):
        if v is not None and (isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                                                     np.floating))):
            raise GraphcError(f"{flag} must be a number, got {v!r}"[:120])
    for v, name in ((temperature, "temperature"), (top_p, "top_p"), (length_penalty, "length_penalty")):
        real(v, names(name))
    if not 1 <= integer(max_new_tokens, names("max_new_tokens")) <= MAX_NEW_TOKENS_LIMIT:
        raise GraphcError(f"{names('max_new_tokens')} must be between 1 and {MAX_NEW_TOKENS_LIMIT}, "
                          f"got {max_new_tokens}")
    if not 1 <= integer(num_beams, names("num_beams")) <= 1024:
        raise GraphcError(f"{names('num_beams')} must be between 1 and 1024, got {num_beams}")
    sampling_flags = [names(n) for n, v in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p))
                      if v is not None]
    if num_beams > 1 and sampling_flags:
        raise GraphcError(f"{', '.join(sampling_flags)} cannot be combined with {names('num_beams', num_beams)}",
                          hint=f"beam search is deterministic; drop {names('num_beams')} to sample")
    if num_beams == 1:
        beam_flags = [names(n) for n, v in (("length_penalty", length_penalty), ("early_stopping", early_stopping))
                      if v is not None]
        if beam_flags:
            raise GraphcError(f"{', '.join(beam_flags)} only apply to beam search",
                              hint=f"add {names('num_beams', 'N')} (N > 1)")
    if early_stopping not in (None, True, False, "never"):
        choices = "true, false or never" if names.cli else "True, False or 'never'"
        raise GraphcError(f"{names('early_stopping')} must be {choices}, got {early_stopping!r}")
    if length_penalty is not None and not np.isfinite(float(length_penalty)):
        raise GraphcError(f"{names('length_penalty')} must be a finite number")
    if length_penalty is not None and max_new_tokens > 1:
        # scores are divided by length ** penalty in float32 (as transformers does): past
        # e^80 either way that overflows (a Python OverflowError) or turns every finished
        # score into -inf / 0, and the ranking is lost
        most = 80.0 / float(np.log(max_new_tokens))
        if abs(float(length_penalty)) > most:
            raise GraphcError(f"{names('length_penalty', f'{length_penalty:g}')} is too large for "
                              f"{max_new_tokens} new tokens: length ** penalty leaves float32",
                              hint=f"use a penalty between {-most:.3g} and "
                                   f"{most:.3g} (1.0 is the usual; 0.6-2 in practice)")
    # transformers' GenerationConfig.validate: R copies of one greedy row would be
    # identical, and beam search has only num_beams finished hypotheses to return
    if not 1 <= integer(num_return_sequences, names("num_return_sequences")) <= 1024:
        raise GraphcError(f"{names('num_return_sequences')} must be between 1 and 1024, got {num_return_sequences}")
    if num_return_sequences > 1 and num_beams == 1 and not sampling_flags:
        raise GraphcError(f"{names('num_return_sequences', num_return_sequences)} needs sampling or beam search: "
                          f"greedy decoding returns one sequence per row",
                          hint=f"add {names('temperature')}, {names('top_k')} or {names('top_p')} to sample, or "
                               f"{names('num_beams', 'N')} with N >= {num_return_sequences}")
    if num_beams > 1 and num_return_sequences > num_beams:
        raise GraphcError(f"{names('num_return_sequences', num_return_sequences)} is more than "
                          f"{names('num_beams', num_beams)}: beam search returns at most num_beams hypotheses "
                          f"per row", hint=f"use {names('num_beams', num_return_sequences)} or more")
    if seed is not None and not sampling_flags:
        raise GraphcError(f"{names('seed')} only applies to sampling",
                          hint=f"add {names('temperature')}, {names('top_k')} or {names('top_p')}")
    if seed is not None and not 0 <= integer(seed, names("seed")) < 2 ** 63:
        raise GraphcError(f"{names('seed')} must be a non-negative integer, got {seed}")
    if not sampling_flags:
        return None
    if temperature is not None and not (np.isfinite(temperature) and temperature > 0):
        raise GraphcError(f"{names('temperature')} must be a positive number, got {temperature}",
                          hint=f"leave out the sampling {'flags' if names.cli else 'arguments'} for greedy decoding")
    if top_k is not None and integer(top_k, names("top_k")) < 1:
        raise GraphcError(f"{names('top_k')} must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise GraphcError(f"{names('top_p')} must be in (0, 1], got {top_p}")
    return Sampling(1.0 if temperature is None else float(temperature), top_k, top_p, seed)


def generate(bundle: str | os.PathLike, input_ids=None, src_ids=None, *, max_new_tokens: int = 20,
             num_beams: int = 1, temperature: float | None = None, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None, length_penalty: float | None = None,
             early_stopping: bool | str | None = None, num_return_sequences: int = 1,
             threads: int | None = DEFAULT_THREADS) -> np.ndarray:
    """Generate with a bundle built by ``graphc build SPEC --kv-cache -o DIR``.

    input_ids: decoder-only prompts, [batch, len] left-padded with the bundle's
    pad id (or one list of ids); src_ids: encoder-decoder sources, padded with
    pad. Greedy by default; sampling when temperature, top_k or top_p is given;
    beam search when num_beams > 1. num_return_sequences R: R independent samples
    per row, or the R (<= num_beams) best beam hypotheses, best first (greedy
    takes only 1, as in transformers). Returns int64 [batch * R, n], rows grouped
    by input row (rows i*R .. i*R + R-1 are row i's): the generated ids
    only (pad after a row's eos)."""
    check_settings(max_new_tokens=max_new_tokens, num_beams=num_beams, temperature=temperature, top_k=top_k,
                   top_p=top_p, seed=seed, length_penalty=length_penalty, early_stopping=early_stopping,
                   num_return_sequences=num_return_sequences)
    return Generator(bundle, threads).generate(
        input_ids, src_ids, max_new_tokens=max_new_tokens, num_beams=num_beams, temperature=temperature,
        top_k=top_k, top_p=top_p, seed=seed, length_penalty=length_penalty, early_stopping=early_stopping,
        num_return_sequences=num_return_sequences)
