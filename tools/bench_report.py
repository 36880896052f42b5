"""The report half of tools/bench.py: the issue's targets judged from same-run
ratios, and the markdown tables. Pure functions of the JSON report, so a saved
``--json-out`` can be re-rendered or re-judged without re-running anything."""
from __future__ import annotations

def ratio(a, b):
    return a / b if a and b else None


def targets(results: dict, limit: float) -> list[dict]:
    """The issue's targets from same-run ratios: PASS, MISS, or N/A (the alternative failed)."""
    rows = []

    def add(target, workload, case, value, ok, detail=""):
        rows.append({"target": target, "workload": workload, "case": case, "value": value,
                     "status": "N/A" if ok is None else "PASS" if ok else "MISS", "detail": detail})

    for name, r in results.items():
        c, g = r["compile"], r["compile"]["graphc"]
        for exp, want, what in (("dynamo", 0.05, ">= 20x faster than dynamo"), ("legacy", 1.0, "not slower than legacy")):
            e = c.get(exp)
            for kind, how in (("inproc_s", "in-process"), ("wall_s", "process wall")):
                if not e or (e.get(kind) is None and not e.get("error")):   # --quick: one shared export process
                    continue
                if e.get("error"):
                    add(f"compile {what} ({how})", name, None, None, None, f"{exp} failed: {e['error']}")
                    continue
                q = g[kind] / e[kind]
                add(f"compile {what} ({how})", name, None, q, q <= want, f"graphc {g[kind]:.3f} s vs {exp} {e[kind]:.3f} s")
        if name == "transformer":
            for kind, how in (("inproc_s", "in-process"), ("wall_s", "process wall")):
                add(f"transformer compiled in < 1 s ({how})", name, None, g[kind], g[kind] < 1.0, f"{g[kind]:.3f} s")
        if r["fresh_process"]:     # --quick reuses one process: later RSS peaks are not this compile's
            add("compile peak memory <= 2x weight bytes", name, None, g["peak_over_weights"],
                g["peak_over_weights"] <= 2.0,
                f"+{g['rss_peak_delta_mb']:.0f} MB for {r['weight_bytes'] / 2**20:.0f} MiB of weights")
        want = 1.0 if name in ("lstm", "lstm_uni", "gru") else 0.85
        for label, cr in r["cases"].items():
            ms = cr["ms"]
            exports = {k: v for k, v in ms.items() if k not in ("graphc", "eager")}
            if exports:
                best = min(exports, key=exports.get)
                q = ms["graphc"] / ms[best]
                add(f"latency <= {want}x best torch export", name, label, q, q <= want,
                    f"graphc {ms['graphc']:.2f} ms vs {best} {ms[best]:.2f} ms")
            q = ms["graphc"] / ms["eager"]
            add("latency below PyTorch eager", name, label, q, q < 1.0,
                f"graphc {ms['graphc']:.2f} ms vs eager {ms['eager']:.2f} ms")
            if name == "encoder" and cr["dims"] == {"batch": 8, "seq": 256} and not cr["lengths"]:
                for lim, how in ((cr["matmul_gflops_interleaved"], "interleaved"), (limit, "best seen")):
                    q = cr["gflops"]["graphc"] / lim
                    add(f">= 80% of single-MatMul GFLOP/s ({how})", name, label, q, q >= 0.8,
                        f"{cr['gflops']['graphc']:.0f} of {lim:.0f} GFLOP/s")
    return rows


def fmt(v, spec=".2f", none="–"):
    return none if v is None else format(v, spec)


def markdown(report: dict) -> str:
    res, lines = report["workloads"], []
    exps, limit = report["config"]["exporters"], report["matmul_limit_gflops"]
    lines.append("### Compile (spec + weights -> .onnx on disk): seconds in-process / process wall; "
                 "ratio = graphc / exporter\n")
    head = ("| workload | weights MB | graphc |" + "".join(f" {e} (start-up) |" for e in exps)
            + "".join(f" ratio vs {e} |" for e in exps) + " graphc compile peak RSS / weights |"
            " process peak RSS MB graphc / " + " / ".join(exps) + " | nodes graphc / " + " / ".join(exps) + " |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in res.items():
        c, g = r["compile"], r["compile"]["graphc"]
        row = f"| {name} | {r['weight_bytes'] / 1e6:.1f} | {g['inproc_s']:.3f} / {g['wall_s']:.2f} |"
        for e in exps:
            x = c.get(e, {})
            row += (f" FAILED: {x['error'][:60]} |" if x.get("error") else
                    f" {fmt(x.get('inproc_s'), '.3f')} / {fmt(x.get('wall_s'))} ({fmt(x.get('startup_s'))}) |")
        row += "".join(f" {fmt(c.get(e, {}).get('ratio_inproc'), '.3f')} / {fmt(c.get(e, {}).get('ratio_wall'), '.3f')} |"
                       for e in exps)
        row += f" {g['peak_over_weights']:.2f}x |" if r["fresh_process"] else " – (shared process) |"
        row += f" {' / '.join(fmt(c.get(k, {}).get('maxrss_mb'), '.0f') for k in ['graphc', *exps])} |"
        row += f" {' / '.join(str(c.get(k, {}).get('nodes', '–')) for k in ['graphc', *exps])} |"
        lines.append(row)
    lines.append("\n### ONNX Runtime latency, ms (medians, interleaved); ratio = graphc / alternative\n")
    head = ("| workload | shape | runs | GFLOP | graphc |" + "".join(f" ORT {e} |" for e in exps) + " eager |"
            " graphc / best export | graphc / eager | same, fastest runs | graphc GFLOP/s |"
            " % of MatMul (interleaved / best seen) | max abs diff vs eager |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in res.items():
        for label, cr in r["cases"].items():
            ms, rm, gf = cr["ms"], cr["ratio_of_min"], cr["gflops"]["graphc"]
            ex = [e for e in exps if e in ms]
            best = max((cr["ratio"][e] for e in ex), default=None)      # the fastest export: the largest ratio
            best_min = max((rm[e] for e in ex), default=None)
            lines.append(f"| {name} | {label} | {cr.get('reps', '–')} | {cr['gflop']:.2f} | {ms['graphc']:.2f} |"
                         + "".join(f" {ms[e]:.2f} |" if e in ms else " fails |" for e in exps)
                         + f" {ms['eager']:.2f} | {fmt(best)} | {cr['ratio']['eager']:.2f} | {fmt(best_min)} / {rm['eager']:.2f} |"
                         f" {gf:.0f} | {100 * gf / cr['matmul_gflops_interleaved']:.0f}% / {100 * gf / limit:.0f}% |"
                         f" {max(cr['max_abs_diff']['graphc'].values()):.1e} |")
    lines.append(f"\nSingle-MatMul limit (ORT, {report['config']['threads']} threads, best of two passes; the "
                 f"'interleaved' column times a {report['config']['matmul_ref_shape']} MatMul in the same rounds as each row): "
                 + ", ".join(f"{k} {v:.0f}" for k, v in report["matmul_gflops"].items())
                 + f" GFLOP/s; limit = {limit:.0f} GFLOP/s.")
    var = {n: r["varlen_max_abs_diff"] for n, r in res.items() if "varlen_max_abs_diff" in r}
    if var:
        lines.append("Variable-length LSTM parity (graphc sequence_lens vs torch packed sequences), max abs diff: "
                     + "; ".join(f"{n} " + ", ".join(f"{k} {v:.1e}" for k, v in d.items()) for n, d in var.items()) + ".")
    lines.append("\n### Targets (value = graphc / alternative, or seconds, or the fraction named)\n")
    names = list(res)
    lines += ["| target | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    order = ("compile >=", "compile not", "transformer", "compile peak", "latency <=", "latency below", ">=")
    for target in sorted(dict.fromkeys(t["target"] for t in report["targets"]),
                         key=lambda t: [t.startswith(o) for o in order].index(True)):
        cells = []
        for n in names:
            ts = [t for t in report["targets"] if t["target"] == target and t["workload"] == n]
            cells.append("<br>".join(f"{t['case'] + ': ' if t['case'] else ''}**{t['status']}** {fmt(t['value'], '.3f')}"
                                     for t in ts) or "")
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    count = {k: sum(t["status"] == k for t in report["targets"]) for k in ("PASS", "MISS", "N/A")}
    lines.append("\n" + ", ".join(f"{v} {k}" for k, v in count.items()) + f". Total run time {report['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------- main
