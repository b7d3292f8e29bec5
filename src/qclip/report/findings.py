"""The study's finding, computed from `results.json` rows (never typed in): every comparison as a paired test
over seeds, and data efficiency read from the metric-vs-fraction curves.

A check compares method A with method B on one (encoder, task) at the largest labelled fraction. Seed s gives
both methods the same initialisation and the same labelled subset, so the test is paired: d_s = sign x
(A_s - B_s) with sign +1 where higher is better (mIoU) and -1 where lower is (RMSE), i.e. d > 0 means A is
better. Reported per check: mean d, its 95% confidence interval (Student t), the relative change in percent
(positive = A better, the same convention as the paper's numbers printed beside it), and a one-sided paired
t-test p-value for "A is better" (scipy.stats.ttest_rel). A check holds when it survives Holm's correction at
alpha = 0.05 within its family (clip-synthetic against every other method; every other pretraining against
random init; more labels against fewer), per run; with one seed nothing is tested and the report says so.

Checks: clip-synthetic vs every other method present (clip-raw, clip-mix, mim, supervised, random, ...);
every other pretraining vs random init (a baseline worse than random init is broken, not a finding); and more
labels never hurt (each method at the largest fraction vs the smallest).
Paper numbers (Vasu et al., 2024, ViT-B/16 on DataCompDR vs MAE): +12.1% mIoU (ADE20k), 11.5% lower RMSE
(NYUv2), ~10x data efficiency.
"""
from __future__ import annotations

import math
from collections import defaultdict

from ..transfer.metrics import HEADLINE

PAPER = {"mIoU_gain_vs_mim": 12.1, "RMSE_reduction_vs_mim": 11.5, "data_efficiency": 10.0}
ALPHA = 0.05
TEST = "one-sided paired t-test over seeds, Holm-corrected within each family of checks"


def percent(f: float) -> str:
    """A labelled fraction as the report writes it: 0.05 -> "5%", 0.125 -> "12.5%"."""
    return f"{f * 100:.3g}%"


def aggregate(rows: list[dict], metric: str | None = None) -> dict[tuple, dict]:
    """(encoder, method, task, fraction) -> {"mean", "std", "n", "values", "by_seed"} of the task's headline
    metric (or `metric`, where a row has it)."""
    acc: dict[tuple, dict] = defaultdict(dict)
    for r in rows:
        if r["task"] not in HEADLINE:
            continue
        name = metric or HEADLINE[r["task"]][0]
        if name in r["metrics"]:
            acc[(r["encoder"], r["method"], r["task"], r["data_fraction"])][r.get("seed", 0)] = r["metrics"][name]
    out = {}
    for k, by_seed in acc.items():
        v = [by_seed[s] for s in sorted(by_seed)]
        m = sum(v) / len(v)
        sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
        out[k] = {"mean": m, "std": sd, "n": len(v), "values": v, "by_seed": dict(sorted(by_seed.items()))}
    return out


def one_encoder(rows: list[dict], encoder: str = "", source: str = "the results") -> list[dict]:
    """The rows of one encoder: `encoder`, or the only one the rows hold. Why: every comparison is within one
    encoder, so a study of several (configs/full.yaml) is read one at a time. A ValueError names the choices and
    ends "pick one ...", so a command line can add its flag."""
    encoders = sorted({r["encoder"] for r in rows})
    if encoder:
        if encoder not in encoders:
            raise ValueError(f"encoder {encoder!r}: not in {source}, which has {', '.join(encoders) or 'no rows'}; "
                             "pick one of those")
        return [r for r in rows if r["encoder"] == encoder]
    if len(encoders) > 1:
        raise ValueError(f"{source} holds {len(encoders)} encoders ({', '.join(encoders)}); pick one")
    return rows


def seed_values(rows: list[dict], method: str, task: str, fraction: float, metric: str | None = None
                ) -> dict[int, float]:
    """{seed: value}, in seed order, of `method` on `task` at labelled `fraction` in one encoder's rows: the task's
    headline metric, or `metric` (e.g. object_mIoU). Empty where the rows have none."""
    for (_, m, t, f), a in aggregate(rows, metric).items():
        if m == method and t == task and math.isclose(f, fraction):
            return a["by_seed"]
    return {}


def paired_test(a: dict[int, float], b: dict[int, float], sign: int) -> dict:
    """Paired comparison over the seeds both have: d = sign * (a - b), so d > 0 means a is better."""
    seeds = sorted(set(a) & set(b))
    d = [sign * (a[s] - b[s]) for s in seeds]
    n = len(d)
    out: dict = {"seeds": seeds, "diffs": d, "n": n, "mean_diff": sum(d) / n if n else None,
                 "ci95": None, "p": None}
    if n >= 2:
        from scipy import stats

        m = out["mean_diff"]
        sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1))
        half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
        out["ci95"] = [m - half, m + half]
        if sd == 0:
            out["p"] = 0.0 if m > 0 else 1.0
        else:
            out["p"] = float(stats.t.sf(m / (sd / math.sqrt(n)), n - 1))
    return out


def _rel(a: float, b: float, sign: int) -> float:
    """Relative improvement of a over b in percent (positive = a better)."""
    return sign * (a - b) / abs(b) * 100 if b else float("nan")


def _holm(checks: list[dict]) -> None:
    """Holm-Bonferroni within each family of checks (the `kind`: clip-synthetic against the others, pretraining
    against random init, more labels against fewer): sets check["holds"] (None where untested)."""
    for kind in {c["kind"] for c in checks}:
        tested = sorted((c for c in checks if c["kind"] == kind and c["p"] is not None), key=lambda c: c["p"])
        m, rejecting = len(tested), True
        for i, c in enumerate(tested):
            rejecting = rejecting and c["p"] <= ALPHA / (m - i) and c["mean_diff"] > 0
            c["holds"] = rejecting
    for c in checks:
        c.setdefault("holds", None)


def checks(rows: list[dict]) -> list[dict]:
    """Every comparison of the run as a paired check (see the module docstring)."""
    agg = aggregate(rows)
    out: list[dict] = []

    def add(kind: str, enc: str, task: str, a: str, fa: float, b: str, fb: float) -> None:
        metric, sign = HEADLINE[task]
        x, y = agg.get((enc, a, task, fa)), agg.get((enc, b, task, fb))
        if x is None or y is None:
            return
        t = paired_test(x["by_seed"], y["by_seed"], sign)
        if not t["n"]:
            return
        name = (f"{enc} {task}: {a} beats {b}" if fa == fb else
                f"{enc} {task}: {a} at {percent(fa)} of the labels at least as good as at {percent(fb)}")
        out.append({"kind": kind, "name": name, "encoder": enc, "task": task, "metric": metric,
                    "a": a, "b": b, "fraction_a": fa, "fraction_b": fb, "mean_a": x["mean"], "mean_b": y["mean"],
                    "rel_pct": _rel(x["mean"], y["mean"], sign), **t})

    for enc in sorted({k[0] for k in agg}):
        for task in HEADLINE:
            fr = sorted({k[3] for k in agg if k[0] == enc and k[2] == task})
            if not fr:
                continue
            top = fr[-1]
            methods = sorted({k[1] for k in agg if k[0] == enc and k[2] == task and k[3] == top})
            if "clip-synthetic" in methods:
                for other in methods:
                    if other != "clip-synthetic":
                        add("synthetic", enc, task, "clip-synthetic", top, other, top)
            if "random" in methods:
                for m in methods:
                    if m not in ("random", "clip-synthetic"):
                        add("sanity", enc, task, m, top, "random", top)
            if len(fr) > 1:
                for m in methods:
                    # "at least as good": more labels must not hurt; tested as a one-sided improvement
                    add("labels", enc, task, m, top, m, fr[0])
    _holm(out)
    return out


def _matched_fraction(curve: list[tuple[float, float]], target: float, sign: int) -> tuple[float | None, bool]:
    """The fraction at which `curve` (sorted (fraction, value)) first reaches `target`, linearly interpolated in
    log fraction, and whether it is a lower bound (already reached at the smallest fraction); None if never."""
    if sign * (curve[0][1] - target) >= 0:
        return curve[0][0], True
    for (f0, v0), (f1, v1) in zip(curve, curve[1:]):
        if sign * (v1 - target) >= 0:
            w = (target - v0) / (v1 - v0) if v1 != v0 else 1.0
            return math.exp(math.log(f0) + w * (math.log(f1) - math.log(f0))), False
    return None, False


BOOTSTRAP_RESAMPLES = 2000


def _efficiency_interval(syn: dict[float, dict[int, float]], raw: dict[int, float], top: float,
                         sign: int) -> dict | None:
    """A 95% percentile-bootstrap interval of the data-efficiency ratio over seeds: resample the seeds both
    curves share (with replacement, the same seeds for both methods: the comparison is paired) and re-read the
    ratio from the resampled mean curves. A resample in which clip-synthetic never reaches clip-raw counts as
    a ratio below 1x (0 here); one already there at the smallest fraction counts at that bound. Why: the
    ratio is read off two flat curves, so noise of a few hundredths moves it by 2x (benchmarks/RESULTS.md), which
    the point estimate alone does not show."""
    import numpy as np

    seeds = sorted(set(raw).intersection(*(set(v) for v in syn.values())))
    if len(seeds) < 2:
        return None
    fr = sorted(syn)
    s_vals = np.array([[syn[f][s] for f in fr] for s in seeds])  # seeds x fractions
    r_vals = np.array([raw[s] for s in seeds])
    rng = np.random.default_rng(0)  # fixed: the report is a function of results.json
    idx = rng.integers(0, len(seeds), size=(BOOTSTRAP_RESAMPLES, len(seeds)))
    ratios = np.zeros(BOOTSTRAP_RESAMPLES)
    bound = 0
    for b, ix in enumerate(idx):
        f_match, at_bound = _matched_fraction(list(zip(fr, s_vals[ix].mean(0).tolist())), float(r_vals[ix].mean()),
                                              sign)
        ratios[b] = top / f_match if f_match else 0.0
        bound += at_bound
    lo, hi = np.percentile(ratios, [2.5, 97.5]).tolist()
    return {"ci95": [lo, hi], "resamples": BOOTSTRAP_RESAMPLES, "seeds": seeds,
            "share_not_reached": float((ratios == 0).mean()), "share_at_bound": bound / BOOTSTRAP_RESAMPLES,
            "bound": top / fr[0]}


def data_efficiency(rows: list[dict]) -> list[dict]:
    """Per (encoder, task): the labelled fraction at which clip-synthetic's mean curve reaches clip-raw's value
    at the largest fraction (linear interpolation in log fraction between measured points) and the ratio
    largest / that fraction. Below the smallest measured fraction it is a lower bound ("at least"). With
    several seeds, "interval" is its 95% bootstrap interval over seeds (`_efficiency_interval`)."""
    agg = aggregate(rows)
    out = []
    for enc in sorted({k[0] for k in agg}):
        for task, (metric, sign) in HEADLINE.items():
            syn = {k[3]: v for k, v in agg.items() if k[:3] == (enc, "clip-synthetic", task)}
            raw = sorted((k[3], v) for k, v in agg.items() if k[:3] == (enc, "clip-raw", task))
            if len(syn) < 2 or not raw:
                continue
            top, target = raw[-1]
            curve = sorted((f, v["mean"]) for f, v in syn.items())
            # a curve that does not improve with more labels (a run too short to learn) has no data efficiency
            # to read: "matched at the smallest fraction" would turn a flat or falling curve into "at least 20x"
            improves = sign * (curve[-1][1] - curve[0][1]) > 0
            f_match, bound = _matched_fraction(curve, target["mean"], sign) if improves else (None, False)
            interval = (_efficiency_interval({f: v["by_seed"] for f, v in syn.items()}, target["by_seed"], top, sign)
                        if improves else None)
            out.append({"encoder": enc, "task": task, "metric": metric, "fractions": sorted(syn),
                        "raw_at": top, "matched_at_fraction": f_match, "lower_bound": bound,
                        "ratio": top / f_match if f_match else None, "interval": interval,
                        **({} if improves else {"no_label_trend": [curve[0], curve[-1]]})})
    return out


def without_boxes(rows: list[dict]) -> list[dict]:
    """The caption-quality confound: clip-synthetic's gain over clip-raw (mean over seeds, all labels) with the
    study's captioner, which also learned from object boxes, and with a captions-only captioner
    (clip-synthetic-captions-only). Positive = better."""
    agg, out = aggregate(rows), []
    for enc, task in sorted({(k[0], k[2]) for k in agg}):
        top = max(k[3] for k in agg if k[:1] == (enc,) and k[2] == task)
        vals = {m: agg.get((enc, m, task, top)) for m in ("clip-raw", "clip-synthetic", "clip-synthetic-captions-only")}
        if all(vals.values()):
            sign = HEADLINE[task][1]
            out.append({"encoder": enc, "task": task, "metric": HEADLINE[task][0], "fraction": top,
                        "gain": sign * (vals["clip-synthetic"]["mean"] - vals["clip-raw"]["mean"]),
                        "kept": sign * (vals["clip-synthetic-captions-only"]["mean"] - vals["clip-raw"]["mean"])})
    return out


def findings(rows: list[dict]) -> dict:
    cs = checks(rows)
    return {"test": TEST, "alpha": ALPHA, "checks": cs, "data_efficiency": data_efficiency(rows),
            "without_boxes": without_boxes(rows), "seeds": max((c["n"] for c in cs), default=0)}


def headline_table(rows: list[dict], metric: str | None = None, largest_only: bool = False,
                   mark_best: bool = False) -> list[list[str]]:
    """Rows of strings: encoder, method, then `task metric @ fraction` columns (mean, ± std with seeds > 1); only
    each task's largest labelled fraction with `largest_only`; with `mark_best` the best mean of each column (and
    encoder) in **bold**."""
    agg = aggregate(rows, metric)
    cols = sorted({(k[2], k[3]) for k in agg})
    if largest_only:
        cols = [(t, f) for t, f in cols if f == max(g for u, g in cols if u == t)]
    header = ["encoder", "method"] + [f"{metric or HEADLINE[t][0]} {t[:3]} @{percent(f)}" for t, f in cols]
    methods = list(dict.fromkeys((k[0], k[1]) for k in agg))
    best: set[tuple] = set()
    if mark_best:
        for enc in {e for e, _ in methods}:
            for t, f in cols:
                vals = {m: agg[(e, m, t, f)]["mean"] for e, m in methods if e == enc and (e, m, t, f) in agg}
                if len(vals) > 1:
                    sign = HEADLINE[t][1]
                    top = max(sign * v for v in vals.values())
                    best |= {(enc, m, t, f) for m, v in vals.items() if sign * v == top}
    table = [header]
    for enc, m in methods:
        cells = []
        for t, f in cols:
            a = agg.get((enc, m, t, f))
            cell = "-" if a is None else (f"{a['mean']:.4f}" + (f" ± {a['std']:.4f}" if a["n"] > 1 else ""))
            cells.append(f"**{cell}**" if (enc, m, t, f) in best else cell)
        table.append([enc, m, *cells])
    return table


def format_table(table: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in table]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def markdown_table(table: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0]),
                      *("| " + " | ".join(r) + " |" for r in table[1:])])


def _pct(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.1f}%"


def check_table(f: dict) -> list[list[str]]:
    t = [["check", "verdict", "A", "B", "change", "mean diff [95% CI]", "p (one-sided)", "seeds"]]
    for c in f["checks"]:
        ci = "-" if c["ci95"] is None else f"{c['mean_diff']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]"
        t.append([c["name"], {True: "holds", False: "fails", None: "untested"}[c["holds"]], f"{c['mean_a']:.4f}",
                  f"{c['mean_b']:.4f}", _pct(c["rel_pct"]), ci, "-" if c["p"] is None else f"{c['p']:.3g}",
                  str(c["n"])])
    return t


def _interval_text(iv: dict | None) -> str:
    """"; 95% bootstrap interval over N seeds 1.9x to at least 20.0x" (empty without seeds to resample)."""
    if not iv:
        return ""

    def end(x: float) -> str:
        return "below 1x (not reached)" if x == 0 else (f"at least {x:.1f}x" if x >= iv["bound"] else f"{x:.1f}x")

    return f"; 95% bootstrap interval over {len(iv['seeds'])} seeds {end(iv['ci95'][0])} to {end(iv['ci95'][1])}"


def finding_lines(f: dict, checks_line: bool = True) -> list[str]:
    """The finding in sentences: the paper's comparisons beside ours, data efficiency, and (`checks_line`) the
    verdict count."""
    lines = []
    by = {(c["encoder"], c["task"], c["a"], c["b"]): c for c in f["checks"] if c["fraction_a"] == c["fraction_b"]}
    for enc, task in sorted({(c["encoder"], c["task"]) for c in f["checks"]}):
        word = "mIoU" if task == "segmentation" else "lower RMSE"
        paper = PAPER["mIoU_gain_vs_mim"] if task == "segmentation" else PAPER["RMSE_reduction_vs_mim"]
        parts = [f"vs {b} {_pct(c['rel_pct'])}" for (e, t, a, b), c in by.items()
                 if (e, t, a) == (enc, task, "clip-synthetic")]
        if parts:
            lines.append(f"{enc} {task}: clip-synthetic {', '.join(parts)} {word} (positive = better; paper vs MAE: "
                         f"+{paper}%)")
    for c in f.get("without_boxes", []):
        # a share of a gain the seeds do not establish is a ratio of two noises (e.g. -564% of +0.003): give none
        base = by.get((c["encoder"], c["task"], "clip-synthetic", "clip-raw"), {}).get("holds")
        share = (f"{c['kept'] / c['gain']:.0%} of it survives" if base and c["gain"] > 0 else
                 "there is no gain to keep" if c["gain"] <= 0 else
                 f"no share given: that gain is {'untested (one seed)' if base is None else 'not significant'}")
        lines.append(f"{c['encoder']} {c['task']}: clip-synthetic's gain over clip-raw is {c['gain']:+.4f} "
                     f"{c['metric']} with a captioner that learned from object boxes, {c['kept']:+.4f} with a "
                     f"captions-only captioner: {share} (positive = better)")
    for e in f["data_efficiency"]:
        if e["ratio"]:
            at, raw = e["matched_at_fraction"], e["raw_at"]
            if e["lower_bound"]:
                how, where = "at least ", (f"already matches clip-raw at {percent(raw)} of the labels at the smallest "
                                           f"measured fraction, {percent(at)}")
            else:
                how, where = "", f"at {percent(at)} of the labels matches clip-raw at {percent(raw)}"
            lines.append(f"{e['encoder']} {e['task']}: data efficiency {how}{e['ratio']:.1f}x (clip-synthetic {where}, "
                         f"read from the curve over {', '.join(percent(x) for x in e['fractions'])} of the labels"
                         f"{_interval_text(e.get('interval'))}; paper ~10x)")
        elif e.get("no_label_trend"):
            (f0, v0), (f1, v1) = e["no_label_trend"]
            lines.append(f"{e['encoder']} {e['task']}: data efficiency not read: clip-synthetic's {e['metric']} does not "
                         f"improve with more labels ({v0:.4g} at {percent(f0)}, {v1:.4g} at {percent(f1)}), so there is no curve to "
                         f"read it from (a longer transfer schedule gives one)")
        else:
            lines.append(f"{e['encoder']} {e['task']}: data efficiency not reached (clip-synthetic stays below "
                         f"clip-raw at {percent(e['raw_at'])} at every measured fraction{_interval_text(e.get('interval'))})")
    cs = f["checks"]
    if not cs or not checks_line:
        return lines
    if f["seeds"] <= 1:
        lines.append(f"One seed: none of the {len(cs)} checks is tested (a paired test needs seeds; run "
                     f"--seeds 5). The differences above are single measurements.")
        return lines
    held = [c for c in cs if c["holds"]]
    lines.append(f"{len(held)} of {len(cs)} checks hold ({TEST}, alpha {ALPHA}, {f['seeds']} seeds)")
    failing = [c for c in cs if not c["holds"]]
    groups: dict[str, list[str]] = {}  # "encoder task" -> its failing checks, in check order
    for c in failing:
        where, _, what = c["name"].partition(": ")
        p = "" if c["p"] is None else f", p {c['p']:.3g}"
        groups.setdefault(where, []).append(f"{what} ({_pct(c['rel_pct'])}{p})")
    for where, items in groups.items():  # the numbers of each: the Checks table
        lines.append(f"Not holding, {where}: " + "; ".join(items))
    return lines
