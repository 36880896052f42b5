"""The ONNX Runtime side of generation: a bundle's sessions as a *step model*
(the protocol graphc.generation.search drives).

Why it is shaped this way (measured, docs/generation.md "Performance"):
- the ``present.*`` outputs of one step are fed back as the next step's
  ``past_key_values.*`` as they are: ONNX Runtime (1.20+) returns outputs as numpy
  views of its own buffers (no copy), and a numpy input is wrapped, not copied.
  Binding them with IOBinding/OrtValues instead was measured: ~45 us slower per
  step on a small model (binding every input each step; ORT refuses a binding
  reused across steps whose output shapes grow), no difference on the 56M one;
- only the last position's logits are copied out (``[B, V]``);
- the attention mask lives in one preallocated ``[B, T + max_new]`` buffer;
- beam search's reorder is the only step that copies the cache (a gather).

A ``cache_layout: shared`` bundle (graphc.prims.shared_cache) takes one buffer per
layer of the whole generation's length instead: the runner allocates them once
(numpy arrays wrapped as OrtValues, no copy), binds each as both the layer's past and
its present, and GroupQueryAttention writes each step's keys into them in place, so no
step allocates or copies the cache (docs/generation.md, "The shared cache buffer").
"""
from __future__ import annotations

import re

import numpy as np

from ..errors import GraphcError
from .bundle import Bundle

_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
       "tensor(bool)": np.bool_, "tensor(int32)": np.int32}


def _session(path, threads: int | None):
    from ..runtime.session import make_session
    return make_session(str(path), "cpu", threads)


def _ort_run(path, run, *args):
    """``run(*args)``, a session run of a bundle's file. When ONNX Runtime refuses it,
    the inputs came from graphc, so the bundle is what is wrong (files from different
    builds, an edited config such as a larger max_positions than the decoder's tables):
    said as a user error with ORT's first line, not a traceback."""
    try:
        return run(*args)
    except Exception as exc:                                            # ORT's own exception types
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines()[0][:400]    # ORT colours its log lines
        raise GraphcError(f"ONNX Runtime failed running {path}: {text}",
                          hint="the bundle's files or its graphc_generation.json may not belong together; "
                               "rebuild it with graphc build --kv-cache") from None


class EncoderRunner:
    """Runs ``encoder.onnx`` once per batch of sources."""

    def __init__(self, bundle: Bundle, threads: int | None = 2):
        enc = bundle.encoder
        self.bundle = bundle
        self.session = _session(enc.path, threads)
        have = {i.name: i for i in self.session.get_inputs()}
        outs = {o.name for o in self.session.get_outputs()}
        missing = [n for n in enc.inputs if n not in have] + [n for n in enc.outputs if n not in outs]
        if missing or set(have) - set(enc.inputs):
            raise GraphcError(f"{enc.path} does not match {bundle.directory}/graphc_generation.json "
                              f"(names {', '.join(sorted(set(missing) | (set(have) - set(enc.inputs))))})",
                              hint="rebuild the bundle with graphc build --kv-cache")
        self.types = {n: _NP.get(have[n].type, np.int64) for n in enc.inputs}

    def __call__(self, src: np.ndarray) -> dict[str, np.ndarray]:
        """src: int64 [B, S], padded with ``pad`` (padding = ids equal to pad, as
        transformers derives the attention mask)."""
        real = src != self.bundle.pad                                   # [B, S] True = real token
        feeds = {}
        for name, role in self.bundle.encoder.inputs.items():
            if role == "source_ids":
                v = src
            elif role == "source_padding_mask":
                v = ~real
            elif role == "source_keep_mask":
                v = real
            elif role == "source_attention_mask":
                v = real
            else:                                                       # source_lengths
                v = real.sum(axis=1)
            feeds[name] = np.ascontiguousarray(v.astype(self.types[name]))
        values = _ort_run(self.bundle.encoder.path, self.session.run, list(self.bundle.encoder.outputs), feeds)
        return dict(zip(self.bundle.encoder.outputs, values))


class DecoderRunner:
    """The cached decoder as a step model. ``fixed`` are extra decoder inputs
    that stay the same at every step (the encoder outputs), batch on axis 0."""

    def __init__(self, bundle: Bundle, threads: int | None = 2):
        self.bundle = bundle
        self.session = _session(bundle.decoder, threads)
        ins = {i.name: i for i in self.session.get_inputs()}
        outs = [o.name for o in self.session.get_outputs()]
        past = [n for c in bundle.cache for n in (c.past_key, c.past_value)]
        self.present = [n for c in bundle.cache for n in (c.present_key, c.present_value)]
        need_in = ["input_ids", "attention_mask"] + past + list(bundle.encoder.outputs if bundle.encoder else ())
        missing = [n for n in need_in if n not in ins] + [n for n in ["logits"] + self.present if n not in outs]
        extra = set(ins) - set(need_in) - {"position_ids"}
        if missing or extra:
            raise GraphcError(f"{bundle.decoder} does not match {bundle.directory}/graphc_generation.json "
                              f"(names {', '.join(sorted(set(missing) | extra))})",
                              hint="rebuild the bundle with graphc build --kv-cache")
        vocab = self.session.get_outputs()[outs.index("logits")].shape[-1]
        if isinstance(vocab, int) and vocab != bundle.vocab_size:
            raise GraphcError(f"{bundle.decoder} scores {vocab} tokens but {bundle.directory}/graphc_generation.json "
                              f"says vocab_size {bundle.vocab_size}", hint="rebuild the bundle with graphc build --kv-cache")
        for c in bundle.cache:                      # a config and a decoder from different builds
            for name in (c.past_key, c.past_value):
                shape = ins[name].shape
                want = {1: c.kv_heads, 3: c.head_dim}
                bad = [(ax, shape[ax], n) for ax, n in want.items()
                       if len(shape) == 4 and isinstance(shape[ax], int) and shape[ax] != n]
                if len(shape) != 4 or bad:
                    got = ", ".join(f"axis {ax} is {d}, the config says {n}" for ax, d, n in bad) or \
                        f"shape {shape}, not [batch, kv_heads, past_seq, head_dim]"
                    raise GraphcError(f"{bundle.decoder} does not match {bundle.directory}/graphc_generation.json: "
                                      f"input {name}: {got}", hint="rebuild the bundle with graphc build --kv-cache")
        self.has_positions = "position_ids" in ins
        self.shared = bundle.cache_layout == "shared"
        self.past = past
        self.float = _NP.get(ins[past[0]].type, np.float32)
        self.out_names = ["logits"] + self.present
        self.fixed: dict[str, np.ndarray] = {}
        self.fixed_rows = None

    def for_one_call(self) -> "DecoderRunner":
        """A runner for one generation that shares this one's session and checked
        metadata but keeps its own step state (mask, positions, caches, bindings):
        every attribute a generation changes is assigned anew in set_fixed, start and
        _allocate, never mutated in place on the shared object, so concurrent calls
        (threads sharing one Generator) cannot see each other's caches."""
        import copy
        return copy.copy(self)

    # --------------------------------------------------------------- step model
    def set_fixed(self, fixed: dict[str, np.ndarray]) -> None:
        self.fixed = {k: np.ascontiguousarray(v) for k, v in fixed.items()}
        self.fixed_rows = np.arange(next(iter(fixed.values())).shape[0]) if fixed else None

    def start(self, input_ids: np.ndarray, attention_mask: np.ndarray, capacity: int = 0) -> np.ndarray:
        b, t = input_ids.shape
        self.mask = np.zeros((b, t + max(capacity, 1)), dtype=np.int64)
        self.mask[:, :t] = attention_mask
        self.length = t
        pos = np.cumsum(attention_mask, axis=1) - 1                     # [B, T] each row's real positions
        self.next_pos = pos[:, -1:].copy() + 1                          # [B, 1]
        np.maximum(pos, 0, out=pos)
        self.cache = None
        if self.shared:
            self._allocate(b, t + max(capacity, 1))
            empty = {}
        else:
            empty = {n: np.zeros((b, c.kv_heads, 0, c.head_dim), dtype=self.float)
                     for c in self.bundle.cache for n in (c.past_key, c.past_value)}
        feeds = {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                 "attention_mask": np.ascontiguousarray(self.mask[:, :t]), **empty}
        if self.has_positions:
            feeds["position_ids"] = pos
        return self._run(feeds)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        b = tokens.shape[0]
        if self.length >= self.mask.shape[1]:                           # grow (start without capacity)
            self.mask = np.concatenate([self.mask, np.zeros((b, self.mask.shape[1]), np.int64)], axis=1)
        if self.shared and self.length >= self.cache[0].shape[2]:
            self._allocate(b, self.mask.shape[1], self.cache)
        self.mask[:, self.length] = 1
        self.length += 1
        feeds = {"input_ids": tokens.reshape(b, 1).astype(np.int64, copy=False),
                 "attention_mask": np.ascontiguousarray(self.mask[:, :self.length])}
        if self.has_positions:
            feeds["position_ids"] = self.next_pos
        out = self._run(feeds)
        self.next_pos = self.next_pos + 1
        return out

    def reorder(self, index: np.ndarray) -> None:
        index = np.asarray(index, dtype=np.int64)
        self.mask = self.mask[index]
        self.next_pos = self.next_pos[index]
        if self.fixed:
            # beams only ever move within their own source row, so the encoder outputs
            # are gathered once (prompts -> beams), not at every step
            rows = self.fixed_rows[index]
            if not np.array_equal(rows, self.fixed_rows):
                self.fixed = {k: np.ascontiguousarray(v[index]) for k, v in self.fixed.items()}
            self.fixed_rows = rows
        if self.shared:
            if len(index) == self.cache[0].shape[0]:
                filled = self.length                                    # the columns written so far: the rest
                for buf in self.cache:                                  # are zeros in every row, and copying a
                    buf[:, :, :filled] = buf[index, :, :filled]         # whole --max-new-tokens buffer per step
                                                                        # cost as much as the step; in place:
                                                                        # the bound memory stays
            else:                                                       # prompts -> beams: new buffers
                self._allocate(len(index), self.cache[0].shape[2], [buf[index] for buf in self.cache])
            return
        self.cache = [v[index] for v in self.cache]                    # a gather: [B', kv, L, d]

    def _allocate(self, batch: int, length: int, old: list | None = None) -> None:
        """The shared layout's buffers [batch, kv, length, d], each bound as a layer's past
        and present (keeping the first columns of ``old`` buffers when given), and the
        one-token step's ids, positions and logits, bound once and rewritten in place
        (wrapping the ~17 outputs of a run as Python objects each step cost more than
        the rest of the loop)."""
        import onnxruntime as ort
        self.cache = []
        self.binding = self.session.io_binding()
        self.binding.bind_output("logits")                                 # first: get_outputs()[0]
        self.step_ids = np.zeros((batch, 1), np.int64)
        self.step_positions = np.zeros((batch, 1), np.int64)
        self.step_logits = np.zeros((batch, 1, self.bundle.vocab_size), self.float)
        self.step_values = [ort.OrtValue.ortvalue_from_numpy(a)          # wrap the arrays: no copy
                            for a in (self.step_ids, self.step_positions, self.step_logits)]
        self.step_bound = False
        for i, c in enumerate(self.bundle.cache):
            for j, (past, present) in enumerate(((c.past_key, c.present_key), (c.past_value, c.present_value))):
                buf = np.zeros((batch, c.kv_heads, length, c.head_dim), dtype=self.float)
                if old is not None:
                    kept = old[2 * i + j]
                    buf[:, :, :kept.shape[2]] = kept[:, :, :length]
                value = ort.OrtValue.ortvalue_from_numpy(buf)               # wraps buf: no copy
                self.binding.bind_ortvalue_input(past, value)
                self.binding.bind_ortvalue_output(present, value)
                self.cache.append(buf)

    def _run_shared(self, feeds: dict) -> np.ndarray:
        bind = self.binding
        one_token = feeds["input_ids"].shape[1] == 1
        if one_token:
            self.step_ids[...] = feeds.pop("input_ids")
            if self.has_positions:
                self.step_positions[...] = feeds.pop("position_ids")
            if not self.step_bound:
                ids, positions, logits = self.step_values
                bind.bind_ortvalue_input("input_ids", ids)
                if self.has_positions:
                    bind.bind_ortvalue_input("position_ids", positions)
                bind.bind_ortvalue_output("logits", logits)
                self.step_bound = True
        else:
            bind.bind_output("logits")                                  # [B, S, V]: ORT allocates it
            self.step_bound = False
        feeds.update(self.fixed)
        for name, value in feeds.items():
            bind.bind_cpu_input(name, np.ascontiguousarray(value))
        _ort_run(self.bundle.decoder, self.session.run_with_iobinding, bind)
        logits = self.step_logits if one_token else bind.get_outputs()[0].numpy()
        return np.array(logits[:, -1, :], dtype=np.float32)             # [B, V], a copy: the buffer is reused

    def _run(self, feeds: dict) -> np.ndarray:
        if self.shared:
            return self._run_shared(feeds)
        feeds.update(self.fixed)
        if self.cache is not None:
            feeds.update(zip(self.past, self.cache))
        values = _ort_run(self.bundle.decoder, self.session.run, self.out_names, feeds)
        self.cache = values[1:]
        return np.ascontiguousarray(values[0][:, -1, :], dtype=np.float32)      # [B, V]
