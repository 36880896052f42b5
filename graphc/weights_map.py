"""The spec's ``weights:`` section: which tensors of a checkpoint to ignore, and
how to turn another naming convention into the spec's parameter names.

    weights:
      ignore: [pooler.*]                       # dropped, with a note; never silent
      map:
        # '*' is one name segment, '**' one or more; {1}, {2} are what they matched
        - {from: h.*.attn.c_attn.weight, to: blocks.layers.{1}.self_attn.in_proj_weight, transpose: true}
        - from: [layers.*.q.weight, layers.*.k.weight, layers.*.v.weight]    # concatenated (axis 0)
          to: blocks.layers.{1}.self_attn.in_proj_weight
        - {from: qkv.weight, to: [q.weight, k.weight, v.weight]}             # split into equal parts

Why declarative, and why strict: a renaming script is code the reader must
trust, and a map that silently skips or double-uses a tensor gives wrong
numbers. So every rule must match at least one tensor, every tensor is used by
at most one rule, every name a rule produces must be a parameter of the spec
with exactly the expected shape, and each failure is reported at the rule.
A [in, out] tensor (GPT-2's Conv1D) is transposed only when a rule says so:
nothing guesses from shapes, which cannot tell a square matrix from its
transpose.

A rule's steps run in this order: each source transposed (``transpose``),
the sources concatenated along ``axis`` (default 0), ``rows: [start, end]``
taken, ``reshape`` applied, then the result split along axis 0 into the
targets (equal parts, or the sizes in ``split``). Tensors no rule matches keep
their names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from .errors import GraphcError, Span, did_you_mean
from .source import Node

RULE_KEYS = ("from", "to", "transpose", "axis", "rows", "reshape", "split", "doc")
SECTION_KEYS = ("ignore", "map", "doc")
_GROUP_REF = re.compile(r"\{(\d+)\}")


@dataclass(frozen=True)
class Pattern:
    """A tensor-name pattern: '*' = one segment's worth of characters (no '.'),
    '**' = anything (one or more segments). Groups are numbered from 1."""
    text: str
    regex: re.Pattern
    groups: int
    span: Span | None

    def instantiate(self, groups: tuple[str, ...]) -> str:
        """This pattern's name with its wildcards replaced by ``groups``."""
        it = iter(groups)
        return re.sub(r"\*\*|\*", lambda _: next(it), self.text)


@dataclass(frozen=True)
class Rule:
    sources: tuple[Pattern, ...]
    targets: tuple[str, ...]
    transpose: bool
    axis: int
    rows: tuple[int, int] | None
    reshape: tuple[int, ...] | None
    split: tuple[int, ...] | None
    span: Span

    def where(self) -> str:
        return f"the rule at line {self.span.line}" if self.span and self.span.line else "a rule"


@dataclass(frozen=True)
class WeightsSection:
    ignore: tuple[Pattern, ...] = ()
    rules: tuple[Rule, ...] = ()


def compile_pattern(text: str, span: Span | None, what: str = "a weight-name pattern") -> Pattern:
    if not text or any(c.isspace() for c in text) or ".." in text or text.startswith(".") or text.endswith("."):
        raise GraphcError(f"{what} must be a dotted tensor name (with '*' wildcards), got {text!r}", span,
                          hint="e.g. 'transformer.h.*.attn.c_attn.weight'; '*' matches one name segment")
    parts, groups = [], 0
    for token in re.split(r"(\*\*|\*)", text):
        if token == "**":
            parts.append("(.+)")
            groups += 1
        elif token == "*":
            parts.append(r"([^.]+)")
            groups += 1
        else:
            parts.append(re.escape(token))
    return Pattern(text, re.compile("".join(parts)), groups, span)


def _strings(node: Node, what: str) -> list[tuple[str, Span]]:
    items = node.value if node.is_list else [node]
    if node.is_list and not items:
        raise GraphcError(f"{what} is an empty list", node.span)
    out = []
    for item in items:
        if not isinstance(item.value, str):
            raise GraphcError(f"{what} must be a tensor name or a list of them, not {item.type_name()}", item.span)
        out.append((item.value, item.span))
    return out


def _ints(node: Node, what: str, n: int | None = None, lo: int | None = None) -> tuple[int, ...]:
    if not node.is_list or (n is not None and len(node.value) != n) or not node.value:
        raise GraphcError(f"{what} must be a list of {n or 'one or more'} integers", node.span)
    out = []
    for item in node.value:
        if isinstance(item.value, bool) or not isinstance(item.value, int) or (lo is not None and item.value < lo):
            raise GraphcError(f"{what}: each entry must be an integer" + (f" >= {lo}" if lo is not None else ""),
                              item.span)
        out.append(item.value)
    return tuple(out)


def parse_weights_section(node: Node) -> WeightsSection:
    """The ``weights:`` node of a spec, checked for structure (patterns, group
    numbers, step arguments); matching happens when a checkpoint is loaded."""
    from .specfile.parse import check_keys, expect_list, expect_map
    expect_map(node, "'weights'")
    check_keys(node, SECTION_KEYS, "'weights'")
    m = node.value
    ignore = tuple(compile_pattern(t, s, "an ignore pattern")
                   for t, s in (_strings(m["ignore"], "'weights.ignore'") if "ignore" in m else []))
    rules = []
    if "map" in m:
        for item in expect_list(m["map"], "'weights.map'").value:
            rules.append(_parse_rule(item))
    return WeightsSection(ignore, tuple(rules))


def _parse_rule(node: Node) -> Rule:
    from .specfile.parse import check_keys, expect_map
    expect_map(node, "a weight-map rule")
    check_keys(node, RULE_KEYS, "a weight-map rule")
    m = node.value
    for key in ("from", "to"):
        if key not in m:
            raise GraphcError(f"this weight-map rule has no '{key}'", node.span,
                              hint="a rule is {from: FILE_NAME_PATTERN, to: SPEC_PARAMETER_NAME}")
    sources = tuple(compile_pattern(t, s) for t, s in _strings(m["from"], "'from'"))
    n = sources[0].groups
    for p in sources[1:]:
        if p.groups != n:
            raise GraphcError(f"'{p.text}' has {p.groups} wildcards, '{sources[0].text}' has {n}", p.span,
                              hint="the sources of one rule are matched together, so their wildcards correspond")
    targets = []
    for text, span in _strings(m["to"], "'to'"):
        for ref in _GROUP_REF.findall(text):
            if not 1 <= int(ref) <= n:
                raise GraphcError(f"'{text}' uses {{{ref}}}, but the pattern has "
                                  f"{n} wildcard{'s' if n != 1 else ''}", span,
                                  hint="{1} is what the first '*' matched, {2} the second")
        if "*" in text:
            raise GraphcError(f"a target name cannot hold '*': '{text}'", span, hint="write {1} for the first wildcard")
        targets.append(text)
    if len(sources) > 1 and len(targets) > 1:
        raise GraphcError("a rule either concatenates several tensors into one or splits one into several",
                          node.span, hint="write two rules")
    transpose = False
    if "transpose" in m:
        if not isinstance(m["transpose"].value, bool):
            raise GraphcError("'transpose' must be true or false", m["transpose"].span)
        transpose = m["transpose"].value
    axis = 0
    if "axis" in m:
        axis = _ints(Node([m["axis"]], m["axis"].span), "'axis'", 1, 0)[0]
    rows = _ints(m["rows"], "'rows' ([start, end])", 2, 0) if "rows" in m else None
    if rows is not None and rows[0] >= rows[1]:
        raise GraphcError(f"'rows' [{rows[0]}, {rows[1]}] is empty: start must be below end", m["rows"].span)
    reshape = None
    if "reshape" in m:
        reshape = _ints(m["reshape"], "'reshape'")
        if sum(1 for d in reshape if d == -1) > 1 or any(d < -1 for d in reshape):
            raise GraphcError("'reshape' takes sizes >= 0 and at most one -1", m["reshape"].span)
    split = None
    if "split" in m:
        split = _ints(m["split"], "'split'", lo=1)
        if len(split) != len(targets):
            raise GraphcError(f"'split' gives {len(split)} sizes for {len(targets)} targets", m["split"].span)
    return Rule(sources, tuple(targets), transpose, axis, rows, reshape, split, node.span)


def _target(template: str, groups: tuple[str, ...]) -> str:
    return _GROUP_REF.sub(lambda mo: groups[int(mo.group(1)) - 1], template)


def _shape(a) -> list[int]:
    return list(np.shape(a))


def apply_weights_section(section: WeightsSection | None, tensors: Mapping[str, np.ndarray],
                          expected: Mapping[str, tuple[int, ...]], source: str,
                          cli_ignore: Iterable[str] = ()) -> tuple[dict[str, np.ndarray], list[str]]:
    """Tensors under the spec's names, and notes (what was ignored). ``expected``
    maps each parameter of the spec to its shape: a rule's every product is
    checked against it here, where the error can point at the rule."""
    section = section or WeightsSection()
    cli_ignore = list(cli_ignore)
    patterns = list(section.ignore) + [compile_pattern(t, None, f"--ignore-weights '{t}'") for t in cli_ignore]
    notes: list[str] = []
    names = sorted(tensors)
    ignored: set[str] = set()
    dropped_by: dict[str, object] = {}
    for p in patterns:
        hit = [n for n in names if p.regex.fullmatch(n)]
        if not hit:
            where = "--ignore-weights" if p.span is None else "this ignore pattern"
            raise GraphcError(f"{where} '{p.text}' matches no tensor of {source}", p.span,
                              hint=_near(p.text, names))
        ignored.update(hit)
        for n in hit:
            dropped_by.setdefault(n, p)
    if ignored:
        shown = sorted(ignored)
        notes.append(f"ignored {len(shown)} tensor{'s' if len(shown) > 1 else ''} of {source} as the "
                     f"{_who(bool(section.ignore), bool(cli_ignore))}: {', '.join(shown[:6])}"
                     + (f", ... ({len(shown) - 6} more)" if len(shown) > 6 else ""))
    remaining = [n for n in names if n not in ignored]
    used_by: dict[str, Rule] = {}
    out: dict[str, np.ndarray] = {}
    made_by: dict[str, Rule] = {}
    for rule in section.rules:
        first = rule.sources[0]
        matches = [(n, mo.groups()) for n in remaining if (mo := first.regex.fullmatch(n))]
        if not matches:
            raise GraphcError(f"weight-map rule '{first.text}' matches no tensor of {source}", first.span,
                              hint=_near(first.text, remaining, ignored))
        for name, groups in matches:
            group = [name] + [p.instantiate(groups) for p in rule.sources[1:]]
            for member, pat in zip(group, rule.sources):
                if member in ignored:
                    raise GraphcError(f"weight-map rule needs '{member}', which the ignore list drops", pat.span)
                if member not in tensors:
                    raise GraphcError(f"weight-map rule needs '{member}' (to go with '{name}'), which is not in "
                                      f"{source}", pat.span, hint=_near(member, remaining))
                if member in used_by:
                    raise GraphcError(f"tensor '{member}' matches this rule and {used_by[member].where()}",
                                      pat.span, hint="each tensor of the file may be used by one rule only; "
                                      "make the patterns more specific")
                used_by[member] = rule
            arrays = _apply_steps(rule, group, [tensors[g] for g in group], source)
            for template, arr in zip(rule.targets, arrays):
                target = _target(template, groups)
                if target in out:
                    raise GraphcError(f"weight map produces '{target}' twice (from '{name}' here, and by "
                                      f"{made_by[target].where()})", rule.span,
                                      hint="the target names must differ for every tensor a rule matches: "
                                      "use {1} for what '*' matched")
                _check_target(rule, target, name, arr, expected)
                out[target] = arr
                made_by[target] = rule
    for n in remaining:
        if n in used_by:
            continue
        if n in out:
            raise GraphcError(f"{source} holds '{n}', and {made_by[n].where()} also produces that name",
                              made_by[n].span, hint=f"ignore the file's own '{n}' or map it elsewhere")
        out[n] = tensors[n]
    # a pattern that drops a parameter under its own name, with no rule making it
    # again, left a bare "missing: fc.weight" for a tensor that is in the file
    lost = sorted(n for n in ignored if n in expected and n not in out)
    if lost:
        p = dropped_by[lost[0]]
        where = "--ignore-weights" if p.span is None else "this ignore pattern"
        more = f" (and {len(lost) - 1} more)" if len(lost) > 1 else ""
        raise GraphcError(f"{where} '{p.text}' drops '{lost[0]}'{more} of {source}, a parameter of the spec",
                          p.span,
                          hint="make the pattern match only the tensors to drop ('*' is one name segment)")
    return out, notes


def _who(spec: bool, cli: bool) -> str:
    return "spec and the command line say" if spec and cli else "spec says" if spec else "command line says"


def _apply_steps(rule: Rule, names: list[str], arrays: list[np.ndarray], source: str) -> list[np.ndarray]:
    def fail(msg: str, hint: str | None = None):
        return GraphcError(f"weight-map rule on '{names[0]}': {msg}", rule.span, hint=hint)
    if rule.transpose:
        for n, a in zip(names, arrays):
            if np.ndim(a) != 2:
                raise fail(f"'transpose' needs 2-D tensors, '{n}' is {_shape(a)}")
        arrays = [a.T for a in arrays]              # [in, out] -> [out, in]
    x = arrays[0]
    if len(arrays) > 1:
        ref = _shape(arrays[0])
        for n, a in zip(names, arrays):
            s = _shape(a)
            if len(s) != len(ref) or rule.axis >= len(s) or \
                    any(d != r for i, (d, r) in enumerate(zip(s, ref)) if i != rule.axis):
                raise fail(f"cannot concatenate along axis {rule.axis}: "
                           + ", ".join(f"'{m}' {_shape(b)}" for m, b in zip(names, arrays)))
        x = np.concatenate(arrays, axis=rule.axis)  # e.g. [q; k; v] rows, torch's in_proj_weight
    if rule.rows is not None:
        start, end = rule.rows
        if np.ndim(x) == 0 or end > x.shape[0]:
            raise fail(f"'rows' [{start}, {end}] lies outside its {_shape(x)} rows")
        x = x[start:end]
    if rule.reshape is not None:
        known = int(np.prod([d for d in rule.reshape if d != -1]))
        if (-1 not in rule.reshape and known != x.size) or (-1 in rule.reshape and (known == 0 or x.size % known)):
            raise fail(f"cannot reshape {_shape(x)} ({x.size} values) to {list(rule.reshape)}")
        x = x.reshape(rule.reshape)
    if len(rule.targets) == 1:
        return [x]
    if np.ndim(x) == 0:
        raise fail("a scalar cannot be split")
    sizes = rule.split or ()
    if not sizes:
        if x.shape[0] % len(rule.targets):
            raise fail(f"{x.shape[0]} rows do not split into {len(rule.targets)} equal parts",
                       hint="give the sizes: split: [rows, rows, ...]")
        sizes = (x.shape[0] // len(rule.targets),) * len(rule.targets)
    if sum(sizes) != x.shape[0]:
        raise fail(f"'split' sizes add up to {sum(sizes)}, the tensor has {x.shape[0]} rows ({_shape(x)})")
    bounds = np.cumsum((0,) + tuple(sizes))
    return [x[bounds[i]:bounds[i + 1]] for i in range(len(sizes))]


def _check_target(rule: Rule, target: str, name: str, arr: np.ndarray, expected: Mapping[str, tuple]) -> None:
    if target not in expected:
        raise GraphcError(f"weight-map rule maps '{name}' to '{target}', which is not a parameter of the spec",
                          rule.span, hint=did_you_mean(target, list(expected)) or
                          "'graphc params SPEC' lists the spec's parameters")
    want = tuple(expected[target])
    got = tuple(np.shape(arr))
    if got != want:
        hint = None
        if len(got) == 2 and got[::-1] == want:
            hint = ("it is exactly the transpose of what is expected: "
                    + ("remove 'transpose: true'" if rule.transpose else "add 'transpose: true' to the rule")
                    + " (GPT-2's Conv1D stores [in, out])")
        raise GraphcError(f"weight-map rule maps '{name}' to '{target}' as {list(got)}, "
                          f"but the spec's '{target}' is {list(want)}", rule.span, hint=hint)


def _near(text: str, names: list[str], ignored: Iterable[str] = ()) -> str:
    """A hint: the file's names closest to a pattern that matched nothing."""
    ignored = set(ignored)
    if not names and not ignored:
        return "the file holds no tensors"
    # compare with the wildcards written as a typical segment
    probe = text.replace("**", "0").replace("*", "0")
    import difflib
    close = difflib.get_close_matches(probe, names, n=3, cutoff=0.5)
    shown = close or names[:3]
    hint = ("closest names in the file: " if close else "the file's names look like: ") + \
        ", ".join(f"'{n}'" for n in shown)
    if ignored and any(compile_pattern(text, None).regex.fullmatch(n) for n in ignored):
        hint = "the tensors it would match are dropped by the ignore list; " + hint
    if "*" in text and "**" not in text:
        deep = re.sub(r"\*", "**", text)
        n = sum(1 for name in names if compile_pattern(deep, None).regex.fullmatch(name))
        if n:
            hint = f"'*' matches one name segment: '{deep}' would match {n} tensor{'s' if n > 1 else ''}; " + hint
    return hint
