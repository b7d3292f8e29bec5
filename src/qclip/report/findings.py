"""Tables and the study's finding, computed from `results.json` rows (never typed in).

Paper numbers (Vasu et al., 2024, ViT-B/16 on DataCompDR vs MAE): +12.1% mIoU (ADE20k), -11.5% RMSE (NYUv2),
~10x data efficiency. Here: relative changes of clip-synthetic against clip-raw and against mim, per encoder.
"""
from __future__ import annotations

import math
from collections import defaultdict

PAPER = {"mIoU_gain_vs_mim": 12.1, "RMSE_reduction_vs_mim": 11.5, "data_efficiency": 10.0}
HEADLINE = {"segmentation": ("mIoU", +1), "depth": ("RMSE", -1)}  # metric, direction (+1: higher is better)


def aggregate(rows: list[dict]) -> dict[tuple, dict]:
    """(encoder, method, task, fraction) -> {"mean", "std", "n", "values"} of the task's headline metric."""
    acc: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if r["task"] in HEADLINE:
            acc[(r["encoder"], r["method"], r["task"], r["data_fraction"])].append(r["metrics"][HEADLINE[r["task"]][0]])
    out = {}
    for k, v in acc.items():
        m = sum(v) / len(v)
        sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
        out[k] = {"mean": m, "std": sd, "n": len(v), "values": v}
    return out


def _rel(a: float, b: float, sign: int) -> float:
    """Relative improvement of a over b in percent (positive = better)."""
    return sign * (a - b) / abs(b) * 100 if b else float("nan")


def findings(rows: list[dict]) -> list[dict]:
    agg = aggregate(rows)
    encoders = sorted({k[0] for k in agg})
    out = []
    for enc in encoders:
        for task, (metric, sign) in HEADLINE.items():
            fr = sorted({k[3] for k in agg if k[0] == enc and k[2] == task})
            if not fr:
                continue
            top = fr[-1]
            get = lambda m, f=top: agg.get((enc, m, task, f), {}).get("mean")  # noqa: E731

            def beats(other: str) -> bool | None:
                """The study's direction with margin: synthetic better than `other` by more than either's std
                over seeds (by any amount with one seed)."""
                a, b = agg.get((enc, "clip-synthetic", task, top)), agg.get((enc, other, task, top))
                if a is None or b is None:
                    return None
                return sign * (a["mean"] - b["mean"]) > max(a["std"], b["std"])

            syn, raw, mim = get("clip-synthetic"), get("clip-raw"), get("mim")
            f_match = None
            if syn is not None and raw is not None:
                for f in fr:  # smallest fraction at which synthetic matches raw at the largest fraction
                    v = get("clip-synthetic", f)
                    if v is not None and sign * (v - raw) >= 0:
                        f_match = f
                        break
            out.append({"encoder": enc, "task": task, "metric": metric, "fraction": top,
                        "synthetic_vs_raw_pct": _rel(syn, raw, sign) if None not in (syn, raw) else None,
                        "synthetic_vs_mim_pct": _rel(syn, mim, sign) if None not in (syn, mim) else None,
                        "beats_raw": beats("clip-raw"), "beats_mim": beats("mim"),
                        "data_efficiency": (top / f_match) if f_match else None,
                        "matched_at_fraction": f_match,
                        "seeds": agg.get((enc, "clip-synthetic", task, top), {}).get("n", 0)})
    return out


def headline_table(rows: list[dict]) -> list[list[str]]:
    """Rows of strings: encoder, method, then `task metric @ fraction` columns (mean +- std over seeds)."""
    agg = aggregate(rows)
    cols = sorted({(k[2], k[3]) for k in agg})
    header = ["encoder", "method"] + [f"{HEADLINE[t][0]} {t[:3]} @{f:g}" for t, f in cols]
    methods = []
    for k in agg:
        if (k[0], k[1]) not in methods:
            methods.append((k[0], k[1]))
    table = [header]
    for enc, m in methods:
        cells = []
        for t, f in cols:
            a = agg.get((enc, m, t, f))
            cells.append("-" if a is None else (f"{a['mean']:.4f}" + (f" ± {a['std']:.4f}" if a["n"] > 1 else "")))
        table.append([enc, m, *cells])
    return table


def format_table(table: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in table]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def markdown_table(table: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0]),
                      *("| " + " | ".join(r) + " |" for r in table[1:])])


def finding_lines(fs: list[dict]) -> list[str]:
    lines = []
    for f in fs:
        def pct(v):
            return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.1f}%"
        eff = (f"{f['data_efficiency']:.0f}x (synthetic at {f['matched_at_fraction']:g} matches raw at "
               f"{f['fraction']:g})" if f["data_efficiency"] else "not reached (synthetic at smaller fractions "
               "stays below raw at the full set)")
        paper = PAPER["mIoU_gain_vs_mim"] if f["task"] == "segmentation" else PAPER["RMSE_reduction_vs_mim"]
        word = "mIoU" if f["task"] == "segmentation" else "RMSE reduction"
        lines.append(f"{f['encoder']} {f['task']}: clip-synthetic vs clip-raw {pct(f['synthetic_vs_raw_pct'])} {word}, "
                     f"vs masked image modeling {pct(f['synthetic_vs_mim_pct'])} (paper vs MAE: "
                     f"{'+' if f['task'] == 'segmentation' else '-'}{paper}%); data efficiency {eff} (paper ~10x)")
    checks = [(f"{f['encoder']} {f['task']}: synthetic beats raw", f["beats_raw"]) for f in fs]
    checks += [(f"{f['encoder']} segmentation: synthetic beats masked image modeling", f["beats_mim"])
               for f in fs if f["task"] == "segmentation"]
    known = [(name, ok) for name, ok in checks if ok is not None]
    if known:
        held = [name for name, ok in known if ok]
        failed = f"; it does not in: {'; '.join(n for n, ok in known if not ok)}" if len(held) < len(known) else ""
        if all(f.get("seeds", 1) <= 1 for f in fs):  # no spread to hold a margin against
            lines.append(f"With one seed the paper's direction holds in {len(held)} of {len(known)} checks{failed} "
                         f"(no margin measured: --seeds 3 compares each difference with the spread over seeds)")
        else:
            lines.append(f"The paper's direction holds with margin (difference > std over seeds) in {len(held)} of "
                         f"{len(known)} checks{failed}")
    return lines
