"""The decoding algorithms: greedy, sampling and beam search, in numpy.

They drive any *step model* (the ONNX Runtime decoder in graphc.generation.runner,
or a test's oracle adapter) through three calls:

- ``start(input_ids [B, T], attention_mask [B, T]) -> [B, V]``: the prompt; the
  scores at each row's last position,
- ``step(tokens [B]) -> [B, V]``: one new token per row (attention mask 1),
- ``reorder(index [B'])``: row i of the cache becomes old row index[i] (beam
  search: expanding prompts to beams, and following the surviving beams).

The semantics follow Hugging Face transformers' generate() (5.x,
generation/utils.py ``_sample`` and ``_beam_search``) step for step, so that a
model with the same weights gives the same ids: finished rows are fed and
filled with ``pad``; warpers apply in transformers' order (temperature, top-k,
top-p); beam search keeps ``max(2, 1 + n_eos) * num_beams`` candidates, ranks
finished hypotheses by ``score / generated_length ** length_penalty`` and uses
the same early-stopping heuristics (True, False, "never"). Scores are float32
like torch's, so near-ties break the same way. The one deliberate difference:
positions after a hypothesis ends hold ``pad`` (transformers' beam search uses
``eos`` there when pad is 0).

Every function returns only the generated ids, [B * R, n] with n <= max_new_tokens
and R = num_return_sequences, rows grouped by prompt (rows i*R .. i*R + R-1 are
prompt i's), as transformers returns them: R independent samples per prompt, or
the R best finished hypotheses of its beam search, best first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

_NEG = np.float32(-1.0e9)     # transformers' "very large negative" score


class StepModel(Protocol):
    def start(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...
    def step(self, tokens: np.ndarray) -> np.ndarray: ...
    def reorder(self, index: np.ndarray) -> None: ...


@dataclass(frozen=True)
class Sampling:
    """Sampling settings; ``None`` means that warper is off (transformers' own
    generate() turns top_k=50 on by default when sampling: pass it explicitly)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def warp(scores: np.ndarray, s: Sampling) -> np.ndarray:
    """transformers' TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
    (min_tokens_to_keep=1, filter value -inf), in that order."""
    scores = scores.astype(np.float32, copy=True)
    if s.temperature != 1.0:
        scores = _cool(scores, s.temperature)
    v = scores.shape[-1]
    if s.top_k is not None and s.top_k > 0:
        k = min(s.top_k, v)
        kth = np.partition(scores, v - k, axis=-1)[:, v - k:v - k + 1]
        scores[scores < kth] = -np.inf
    if s.top_p is not None and s.top_p < 1.0:
        order = np.argsort(scores, axis=-1, kind="stable")              # ascending, as torch.sort
        sorted_scores = np.take_along_axis(scores, order, axis=-1)
        cum = np.cumsum(_softmax(sorted_scores), axis=-1)
        remove_sorted = cum <= np.float32(1 - s.top_p)
        remove_sorted[:, -1] = False                                     # keep at least one
        remove = np.zeros_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, axis=-1)
        scores[remove] = -np.inf
    return scores


def _cool(scores: np.ndarray, temperature: float) -> np.ndarray:
    """scores / temperature in float32, as transformers divides. A temperature so
    small that the quotient overflows (1e-40, or one that rounds to 0 in float32)
    would give inf - inf = NaN in the softmax and every row would draw id 0; there
    the same distribution is taken from each score's distance to its row's best,
    in float64: the best score(s) 0, the others their (possibly -inf) quotient."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        scaled = scores / np.float32(temperature)
        if not (np.isnan(scaled).any() or np.isinf(scaled[np.isfinite(scores)]).any()):
            return scaled
        best = scores.max(axis=-1, keepdims=True)
        d = (scores.astype(np.float64) - best) / float(temperature)
        d[np.isneginf(scores)] = -np.inf
        d[scores == best] = 0.0
        return d.astype(np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _sample_rows(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row from each row's distribution (inverse CDF)."""
    cum = np.cumsum(probs.astype(np.float64), axis=-1)
    u = rng.random(probs.shape[0]) * cum[:, -1]
    idx = (cum <= u[:, None]).sum(axis=-1)
    return np.minimum(idx, probs.shape[-1] - 1).astype(np.int64)


def greedy_or_sample(model: StepModel, input_ids: np.ndarray, attention_mask: np.ndarray, *,
                     max_new_tokens: int, eos: tuple, pad: int,
                     sampling: Sampling | None = None, num_return_sequences: int = 1) -> np.ndarray:
    """transformers' ``_sample``: greedy (argmax) or sampling, stopping rows at eos.

    num_return_sequences R > 1 (sampling only: greedy would repeat one row) runs the
    prompt once and then copies each row's cache R times, which is what
    transformers' input expansion (repeat_interleave) computes; the R copies then
    draw independently."""
    R = num_return_sequences
    batch = input_ids.shape[0] * R
    out = np.full((batch, max_new_tokens), pad, dtype=np.int64)
    unfinished = np.ones(batch, dtype=bool)
    eos_arr = np.asarray(eos, dtype=np.int64)
    rng = np.random.default_rng(sampling.seed) if sampling is not None else None
    scores = model.start(input_ids, attention_mask)                     # [b, V]
    if R > 1:
        model.reorder(np.repeat(np.arange(input_ids.shape[0]), R))      # prompt i -> rows i*R .. i*R+R-1
        scores = np.repeat(scores, R, axis=0)                           # [b*R, V]
    n = 0
    while n < max_new_tokens:
        if sampling is None:
            tokens = scores.argmax(axis=-1).astype(np.int64)
        else:
            tokens = _sample_rows(_softmax(warp(scores, sampling)), rng)
        if eos_arr.size:
            tokens = np.where(unfinished, tokens, pad)
        out[:, n] = tokens
        n += 1
        if eos_arr.size:
            unfinished &= ~np.isin(tokens, eos_arr)
            if not unfinished.any():
                break
        if n == max_new_tokens:
            break
        scores = model.step(tokens)
    return out[:, :n]


def beam_search(model: StepModel, input_ids: np.ndarray, attention_mask: np.ndarray, *,
                max_new_tokens: int, eos: tuple, pad: int, num_beams: int,
                length_penalty: float = 1.0, early_stopping: bool | str = False,
                num_return_sequences: int = 1) -> np.ndarray:
    """transformers' ``_beam_search`` (no sampling); returns the num_return_sequences
    (<= num_beams) best finished hypotheses of each row, best first: the finished
    set is kept sorted by its length-penalised score, as transformers' is.

    Shapes: b = prompt rows, nb = num_beams, K = candidates kept per row, V = vocab,
    N = max_new_tokens; running hypotheses live in [b, nb, N] arrays."""
    b, nb, N = input_ids.shape[0], num_beams, max_new_tokens
    eos_arr = np.asarray(eos, dtype=np.int64)
    K = max(2, 1 + eos_arr.size) * nb
    top_nb = np.arange(K) < nb                                          # [K]
    lp = float(length_penalty)

    running = np.full((b, nb, N), pad, dtype=np.int64)
    running_scores = np.zeros((b, nb), dtype=np.float32)
    running_scores[:, 1:] = _NEG                        # only beam 0 expands at the first step
    seqs = np.full((b, nb, N), pad, dtype=np.int64)     # the finished hypotheses
    seq_lens = np.zeros((b, nb), dtype=np.int64)
    beam_scores = np.full((b, nb), _NEG, dtype=np.float32)
    finished = np.zeros((b, nb), dtype=bool)
    improvable = np.ones((b, 1), dtype=bool)
    rows = np.arange(b)[:, None]

    scores = model.start(input_ids, attention_mask)                     # [b, V]
    model.reorder(np.repeat(np.arange(b), nb))                          # prompts -> beams
    scores = np.repeat(scores, nb, axis=0)                              # [b*nb, V]
    t = 0
    while True:
        V = scores.shape[-1]
        logp = log_softmax(scores).reshape(b, nb, V) + running_scores[:, :, None]
        flat = logp.reshape(b, nb * V)
        # torch.topk(k=K): the K best, best first
        part = np.argpartition(-flat, K - 1, axis=-1)[:, :K]
        order = np.argsort(-np.take_along_axis(flat, part, axis=-1), axis=-1, kind="stable")
        top_idx = np.take_along_axis(part, order, axis=-1)             # [b, K]
        top_lp = np.take_along_axis(flat, top_idx, axis=-1)             # [b, K]
        src_beam = top_idx // V
        tok = top_idx % V
        cand = running[rows, src_beam]                                  # [b, K, N]
        cand[:, :, t] = tok
        hits = (t + 1 >= N) | (np.isin(tok, eos_arr) if eos_arr.size else np.zeros_like(tok, dtype=bool))

        # e. the best nb unfinished candidates keep running
        run_lp = top_lp + hits.astype(np.float32) * _NEG
        keep = _topk_indices(run_lp, nb)                                # [b, nb]
        running = np.take_along_axis(cand, keep[:, :, None], axis=1)
        running_scores = np.take_along_axis(run_lp, keep, axis=1)
        parent = np.take_along_axis(src_beam, keep, axis=1)             # [b, nb]

        # f. finished candidates among the top nb join the finished set if they rank
        just_done = hits & top_nb[None, :]
        fin_lp = top_lp / np.float32((t + 1) ** lp)
        full = finished.all(axis=-1, keepdims=True) & (early_stopping is True)
        fin_lp = fin_lp + full.astype(np.float32) * _NEG
        fin_lp = fin_lp + (~improvable).astype(np.float32) * _NEG
        fin_lp = fin_lp + (~just_done).astype(np.float32) * _NEG
        m_seqs = np.concatenate([seqs, cand], axis=1)
        m_scores = np.concatenate([beam_scores, fin_lp], axis=1)
        m_lens = np.concatenate([seq_lens, np.full((b, K), t + 1, dtype=np.int64)], axis=1)
        m_fin = np.concatenate([finished, just_done], axis=1)
        best = _topk_indices(m_scores, nb)
        seqs = np.take_along_axis(m_seqs, best[:, :, None], axis=1)
        beam_scores = np.take_along_axis(m_scores, best, axis=1)
        seq_lens = np.take_along_axis(m_lens, best, axis=1)
        finished = np.take_along_axis(m_fin, best, axis=1)

        t += 1
        if early_stopping == "never" and lp > 0.0:
            best_len = N
        else:
            best_len = t
        best_possible = running_scores[:, :1] / np.float32(best_len ** lp)
        worst = np.where(finished, beam_scores.min(axis=1, keepdims=True), _NEG)
        improvable = improvable & (best_possible > worst).any(axis=-1, keepdims=True)
        go_on = (improvable.any() and not (finished.all() and early_stopping is True)
                 and not hits.all())
        if not go_on:
            break
        model.reorder((parent + np.arange(b)[:, None] * nb).reshape(-1))
        scores = model.step(running[:, :, t - 1].reshape(-1))

    R = num_return_sequences
    out = seqs[:, :R, :].reshape(b * R, N)                             # [b, R, N] -> [b*R, N], grouped by row
    # hypotheses never finished (a row that could not improve) keep their fill
    length = int(seq_lens[:, :R].max()) if b else 0
    return out[:, :length]


def _topk_indices(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest per row, largest first (ties: lower index first)."""
    order = np.argsort(-x, axis=-1, kind="stable")
    return order[:, :k]
