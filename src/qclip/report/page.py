"""`report.md` and a self-contained `report.html` (figures inlined as base64 PNG; opens from disk)."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from ..atomic import atomic_write_text
from ..config import STUDY_METHODS
from ..transfer.run import CONVERGED_MAX_DROP_PCT
from .findings import (TEST, aggregate, check_table, finding_lines, findings, headline_table, markdown_table,
                       percent)


def notes(results: dict) -> str:
    """What the run's methods share and how they differ, written from its config and the table of methods."""
    cfg = results.get("config") or {}
    study, transfer = cfg.get("study", {}), cfg.get("transfer", {})
    methods = [m for m in study.get("methods", []) if m in STUDY_METHODS]
    shared = ("What every method of an encoder shares: the pool images (with pretrain.require_raw_caption, which the "
              "study sets, only pool images that have alt-text, so every method sees the very same images), the image "
              "tower and its initialisation for a given seed, the augmentation (open_clip's random-resized-crop train "
              "transform, for the baselines too) and the pretraining budget. ")
    # which masked image modeling a hierarchical tower got (results written before the key: SimMIM)
    mim = {"spark": "SparK"}.get(cfg.get("pretrain", {}).get("mim_hierarchical", "simmim"), "SimMIM")
    about = "Methods differ only in the training signal: " + "; ".join(
        f"{m}, {STUDY_METHODS[m].about.format(mim_hierarchical=mim)}" for m in methods) + ". " if methods else ""
    given = study.get("given") or {}
    if methods and given:
        about += "Trained here: " + ", ".join(methods) + ". "
    if given:
        about += ("Given as encoders (published weights, not trained here; transferred with the same recipe, "
                  "labelled subsets and seeds): " + "; ".join(f"{n} = {spec}" for n, spec in given.items()) + ". ")
    if study.get("pool"):
        shared = shared.replace("the pool images", f"the pool images (your pool, {study['pool']})", 1)
    fractions = ", ".join(percent(f) for f in transfer.get("data_fractions", []))
    dense = study.get("dense") or []
    if dense:
        probe = "Transfer, per dense dataset with its own recipe: " + "; ".join(
            f"{d['name']} ({d['task']}, {d.get('layout', 'auto')} layout at {d['path']}; trained on "
            f"'{d.get('train_split') or 'the layout default'}', reported on '{d.get('val_split') or 'the layout default'}'"
            + (f", recipe {d['recipe']}" if d.get("recipe") else "") + ")" for d in dense) + (
            ". Each trains a fresh head per labelled fraction (nested subsets, the same for every method at a given "
            "seed) and evaluates on the whole reported split. ")
    else:
        probe = (f"Transfer trains a fresh {transfer.get('mode', '?')} head per labelled fraction ({fractions}; nested "
                 f"subsets, the same for every method at a given seed) for {transfer.get('steps', '?')} steps and "
                 f"evaluates on the world's {transfer.get('val_split') or 'val'} split. " if transfer else "")
    if transfer.get("probe_weight_decays"):  # DINOv2's linear evaluation: a head per weight decay
        grid = ", ".join(f"{w:g}" for w in transfer["probe_weight_decays"])
        probe += (f"At every fraction a head is trained per weight decay ({grid}); the one best on the "
                  f"{transfer.get('select_split', 'dev')} split is kept and only that head is evaluated on the "
                  "reported split (the table 'Probe weight decay chosen' lists the choices). ")
    return shared + about + probe + ("Seed s gives every method the same initialisation and labelled subset, which is "
                                     "what makes the checks paired.")


def budget_line(results: dict) -> str:
    """The pretraining budget of each encoder, as configured (the same for every method of that encoder)."""
    cfg = results.get("config") or {}
    train, study = cfg.get("pretrain", cfg.get("train", {})), cfg.get("study", {})  # "train": before the rename
    parts = []
    for enc in study.get("encoders", []):
        t = {**train, **study.get("encoder_train", {}).get(enc, {})}
        parts.append(f"{enc} {t.get('steps')} steps x batch {t.get('batch_size')}")
    return "Pretraining budget, the same for every method of an encoder: " + "; ".join(parts) + "." if parts else ""


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).stem)}">'


def per_class_table(rows: list[dict]) -> list[list[str]]:
    """IoU per class at the largest fraction, mean over seeds, for each (encoder, method) with class names."""
    seg = [r for r in rows if r["task"] == "segmentation" and r["metrics"].get("class_names")
           and "IoU_per_class" in r["metrics"]]
    if not seg:
        return []
    names = seg[0]["metrics"]["class_names"]
    top = max(r["data_fraction"] for r in seg)
    acc: dict[tuple, list] = {}
    for r in seg:
        if r["data_fraction"] == top:
            acc.setdefault((r["encoder"], r["method"]), []).append(r["metrics"])
    t = [["encoder", "method", *names, "object mIoU"]]
    for (enc, m), ms in acc.items():
        cells = []
        for i in range(len(names)):
            v = [x["IoU_per_class"][i] for x in ms if x["IoU_per_class"][i] is not None]
            cells.append(f"{sum(v) / len(v):.3f}" if v else "-")
        obj = [x["object_mIoU"] for x in ms if "object_mIoU" in x]
        t.append([enc, m, *cells, f"{sum(obj) / len(obj):.3f}" if obj else "-"])
    return t


def probe_selection_table(rows: list[dict]) -> list[list[str]]:
    """The weight decay each probe grid kept, per (encoder, task, method) and fraction, seeds in order."""
    acc: dict[tuple, dict[float, list]] = {}
    for r in sorted(rows, key=lambda r: r.get("seed", 0)):
        sel = (r.get("probe") or {}).get("selection")
        if sel:
            acc.setdefault((r["encoder"], r["task"], r["method"]), {}).setdefault(
                r["data_fraction"], []).append(f"{sel['weight_decay']:g}")
    if not acc:
        return []
    fracs = sorted({f for d in acc.values() for f in d})
    t = [["encoder", "task", "method", *(f"@{percent(f)}" for f in fracs)]]
    for (enc, task, m), d in acc.items():
        t.append([enc, task, m, *(" / ".join(d.get(f, [])) or "-" for f in fracs)])
    return t


def probe_convergence_table(rows: list[dict]) -> list[list[str]]:
    """Did each probe converge? Per (encoder, task, method): how many of its probes (fractions x seeds) had a
    training loss that fell by at most CONVERGED_MAX_DROP_PCT over the last fifth of their steps (as recorded by
    `transfer.run.convergence`), and
    the largest such fall, with where it was. Why: a probe still learning measures its schedule, not the
    features; the curves figure shows one seed, this counts all of them."""
    acc: dict[tuple, list[tuple[float, float, int, bool]]] = {}
    for r in rows:
        p = r.get("probe") or {}
        if p.get("converged") is not None:
            acc.setdefault((r["encoder"], r["task"], r["method"]), []).append(
                (p.get("loss_drop_last_fifth_pct") or 0.0, r["data_fraction"], r.get("seed", 0), p["converged"]))
    if not acc:
        return []
    t = [["encoder", "task", "method", "probes converged", "largest loss fall over the last fifth"]]
    for (enc, task, m), probes in acc.items():
        drop, frac, seed, _ = max(probes)
        t.append([enc, task, m, f"{sum(c for *_, c in probes)} of {len(probes)}",
                  f"{drop:.1f}% ({percent(frac)} of the labels, seed {seed})"])
    return t


def pretraining_table(rows: list[dict]) -> list[list[str]]:
    """Zero-shot classification and retrieval of the CLIP runs (mean over seeds), with the majority-class rate."""
    acc: dict[tuple, dict[str, list]] = {}
    for r in rows:
        if r["task"] in ("zeroshot", "retrieval"):
            d = acc.setdefault((r["encoder"], r["method"]), {})
            for k in (("top1", "chance_top1") if r["task"] == "zeroshot" else
                      ("chance_R@1", "image_to_text_R@1", "text_to_image_R@1", "image_to_text_R@5",
                       "text_to_image_R@5")):
                if k in r["metrics"]:
                    d.setdefault(k, []).append(r["metrics"][k])
    if not acc:
        return []
    keys = sorted({k for d in acc.values() for k in d}, key=lambda k: (not k.startswith("top1"), k))
    t = [["encoder", "method", *keys]]
    for (enc, m), d in acc.items():
        t.append([enc, m, *(f"{sum(d[k]) / len(d[k]):.3f}" if k in d else "-" for k in keys)])
    return t


# a contrastive run "left chance" when its late loss is under 0.95 x the loss at chance (runs stuck at ln B end at
# 0.96-0.98 x chance). Leaving chance is not learning shapes: runs at 0.79-0.95 x chance have probed at random
# init's level, having learned an easier cue or escaped in their last steps (benchmarks/RESULTS.md, archive);
# shape_learning_table asks the probe
LEARNED_BELOW = 0.95

# an encoder "learned shapes" when its object-class mIoU is at least 1.3x random init's of the same seed: CLIP
# runs that left chance on shape words have probed at 1.55-2.4x, those at chance or on an easier cue at 0.91-1.04x,
# those that left chance only after ~1,000 steps at 1.00-1.24x (the four-shape world's headline screens, RESULTS archive)
SHAPES_ABOVE = 1.3


def shape_learning_ratios(rows: list[dict]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """(encoder, method) -> [(seed, object-class mIoU / random init's of the same seed and encoder)], at the
    largest labelled fraction, for every pretrained method."""
    agg = {k: a for k, a in aggregate(rows, "object_mIoU").items() if k[2] == "segmentation"}
    if not agg:
        return {}
    top = max(k[3] for k in agg)
    acc: dict[tuple, list[tuple[int, float]]] = {}
    for (enc, m, _, f), a in agg.items():
        if m == "random" or f != top:
            continue
        base = agg.get((enc, "random", "segmentation", f), {}).get("by_seed", {})
        ratios = [(s, v / base[s]) for s, v in a["by_seed"].items() if base.get(s)]
        if ratios:
            acc[(enc, m)] = ratios
    return acc


def shape_learning_table(rows: list[dict]) -> list[list[str]]:
    """Did each pretraining learn the object shapes a linear probe reads? Per seed, its object-class mIoU at the
    largest labelled fraction over random init's of the same seed and encoder. Why: a mean over seeds hides a
    seed that learned nothing (a baseline stuck at chance drags a paired test), and a contrastive loss can leave
    chance on a cue that is not the shapes; this says which seeds, from the probe itself."""
    acc = shape_learning_ratios(rows)
    if not acc:
        return []
    t = [["encoder", "method", "object mIoU / random init's, per seed", f"seeds under {SHAPES_ABOVE}x"]]
    for (enc, m), ratios in acc.items():
        low = [str(s) for s, x in ratios if x < SHAPES_ABOVE]
        t.append([enc, m, " / ".join(f"{x:.2f}" for _, x in ratios),
                  f"{len(low)} of {len(ratios)}" + (f" (seed {', '.join(low)})" if low else "")])
    return t


def contrastive_learning_table(pretrain_dirs: dict[str, Path]) -> list[list[str]]:
    """Did each CLIP/SigLIP pretraining learn? Its loss over the last fifth of the logged steps against the loss
    at chance (an encoder that tells no pair apart; `chance_loss`). Why: a raw-caption run whose loss stays at
    chance is a baseline that did not learn (seen here at noisy alt-text), which the checks alone do not show.
    The baselines (their summary names an `objective`) have other losses and are left out."""
    import json

    import yaml

    from ..train.pretrain import chance_loss, late_loss, logged_losses

    t = [["run", "loss", "late loss (last fifth)", "chance", "late / chance", "verdict"]]
    for label, d in sorted(pretrain_dirs.items()):
        d = Path(d)
        try:
            summary = json.loads((d / "summary.json").read_text())
            cfg = (yaml.safe_load((d / "config.yaml").read_text()) or {}).get("pretrain", {})
            losses = [p["loss"] for p in logged_losses(d)]
        except (OSError, ValueError):
            continue  # not a finished pretraining folder (or one from before these files were written)
        if "objective" in summary or not losses:
            continue
        loss = cfg.get("loss", "clip")
        chance = chance_loss(loss, int(cfg.get("batch_size", 0)) * int(summary.get("world_size", 1)))
        mean = late_loss(losses)
        t.append([label, loss, f"{mean:.3f}", f"{chance:.3f}", f"{mean / chance:.2f}",
                  "left chance" if mean / chance < LEARNED_BELOW else "near chance: did not learn"])
    return t


class Doc:
    """The report as blocks, rendered once to Markdown and once to HTML, so both say the same thing in the same
    order. `**x**` in a table cell marks a best value (bold in both)."""

    def __init__(self) -> None:
        self.md: list[str] = []
        self.html: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.md += ["#" * level + " " + text, ""]
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str, md_text: str | None = None) -> None:
        if text:
            self.md += [md_text or text, ""]
            self.html.append(f"<p>{_inline(text)}</p>")

    def items(self, lines: list[str]) -> None:
        if lines:
            self.md += [*(f"- {x}" for x in lines), ""]
            self.html.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in lines) + "</ul>")

    def table(self, t: list[list[str]]) -> None:
        if len(t) > 1:
            self.md += [markdown_table(t), ""]
            head = "".join(f"<th>{_inline(c)}</th>" for c in t[0])
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in t[1:])
            self.html.append(f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
                             "</table></div>")

    def figure(self, title: str, path: Path) -> None:
        self.md += [f"![{title}]({Path(path).name})", ""]
        self.html.append(f"<figure>{_img(path)}<figcaption>{html.escape(title)}</figcaption></figure>")

    def open_details(self, summary: str) -> None:
        self.md += ["<details>", f"<summary>{html.escape(summary)}</summary>", ""]
        self.html.append(f"<details><summary>{_inline(summary)}</summary>")

    def close_details(self) -> None:
        self.md += ["</details>", ""]
        self.html.append("</details>")


def _inline(text: str) -> str:
    """HTML of a line of the report: escaped, with `**bold**` and `code` kept."""
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.scroll{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}td strong{color:#000}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:13px;color:#555}
details{margin:.5em 0;padding:.3em .6em;border:1px solid #e3e3e3;border-radius:4px}summary{cursor:pointer}
code{background:#f4f4f4;padding:0 .25em;border-radius:3px;overflow-wrap:anywhere}li{margin:.25em 0}
.lead{font-size:15px}
"""

CHECK_FAMILY_NAMES = {"synthetic": "clip-synthetic against each other method",
                      "sanity": "each pretraining against random init", "labels": "more labels against fewer"}
CHECK_FAMILIES = {  # findings' check kinds, in the order the report lists them
    "synthetic": "clip-synthetic against every other method",
    "sanity": "every other pretraining against random init (a baseline below random init is broken, not a finding)",
    "labels": "more labels against fewer (each method at the largest labelled fraction against the smallest)",
}


def compared_lines(results: dict) -> list[str]:
    """What the run compared, a line each: the methods, the data, the budgets, the transfer and the seeds."""
    cfg = results.get("config") or {}
    study, world, transfer = cfg.get("study", {}), cfg.get("world", {}), cfg.get("transfer", {})
    rows = results["rows"]
    mim = {"spark": "SparK"}.get(cfg.get("pretrain", {}).get("mim_hierarchical", "simmim"), "SimMIM")
    methods = list(dict.fromkeys(r["method"] for r in rows)) or study.get("methods", [])
    given = study.get("given") or {}
    lines = []
    for m in methods:
        if m in given:
            lines.append(f"**{m}**: given weights, `{given[m]}` (not trained here)")
        elif m in STUDY_METHODS:
            about = STUDY_METHODS[m].about.format(mim_hierarchical=mim)
            if study.get("captioner") and STUDY_METHODS[m].captioner == "main":
                about = f"CLIP on the captions of `{study['captioner']}`" + (
                    " (with probability study.mix_p, else the alt-text)" if m == "clip-mix" else "")
            lines.append(f"**{m}**: {about}")
    if study.get("pool"):
        data = f"your pool `{study['pool']}`"
    elif world:
        data = (f"the embedded procedural world: {world.get('n_pool', 0):,} pool images at {world.get('image_size')} "
                f"px with alt-text (synthetic scenes, not photographs)")
    else:
        data = "the pool recorded in results.json"
    dense = study.get("dense") or []
    if dense:
        data += "; dense transfer to " + ", ".join(f"{d['name']} ({d['task']})" for d in dense)
    elif world:
        data += (f"; dense transfer trains on the world's {world.get('n_dense', 0):,} labelled images and reports "
                 f"on its {transfer.get('val_split') or 'val'} split ({world.get('n_val', 0):,} images)")
    lines.append(f"**Data**: {data}.")
    budget = budget_line(results)
    if budget:
        lines.append("**Budget**: " + budget.replace("Pretraining budget, the same", "pretraining, the same"))
    if transfer:
        fr = ", ".join(percent(f) for f in transfer.get("data_fractions", []))
        lines.append(f"**Transfer**: a {transfer.get('mode', '?')} head per labelled fraction ({fr} of the labelled "
                     f"images), {transfer.get('steps', '?')} steps each.")
    seeds = results.get("seeds", 1)
    first = (cfg or {}).get("seed", 0)
    lines.append(f"**Seeds**: {seeds}" + (f" ({first} to {first + seeds - 1}); seed s gives every method the same "
                                          "initialisation and labelled subset, so comparisons are paired"
                                          if seeds > 1 else f" (seed {first}): single measurements, no tests"))
    return lines


def check_summary(f: dict, seeds: int) -> tuple[str, list[tuple[str, list[list[str]]]]]:
    """The checks in one line, and per family its summary with its table (none with one seed: nothing is tested)."""
    cs = f["checks"]
    if not cs:
        return "", []
    if seeds <= 1:
        kinds = [CHECK_FAMILY_NAMES[k] for k in CHECK_FAMILIES if any(c["kind"] == k for c in cs)]
        return (f"{len(cs)} checks ({', '.join(kinds)}): none tested, a paired test needs at least two seeds. Run "
                "with `--seeds 5` (or `study.seeds=5`) to test them; the finding above gives this seed's "
                "differences."), []
    held = sum(bool(c["holds"]) for c in cs)
    groups = []
    for kind, title in CHECK_FAMILIES.items():
        mine = [c for c in cs if c["kind"] == kind]
        if mine:
            ok = sum(bool(c["holds"]) for c in mine)
            failing = [c["name"].partition(": ")[2] + f" ({c['name'].partition(':')[0]})" for c in mine if not c["holds"]]
            groups.append((f"{title}: {ok} of {len(mine)} hold" + (f"; not holding: {'; '.join(failing)}" if failing
                                                                    else ""), check_table({"checks": mine})))
    return f"{held} of {len(cs)} checks hold ({TEST}, alpha 0.05, {seeds} seeds).", groups


def reference_section(doc: Doc, results: dict, reference: dict, reference_path: str,
                      figures: dict[str, Path]) -> None:
    from .reference import config_differences, gain_placements, placements

    rows, ref_rows = results["rows"], reference["rows"]
    ps = placements(rows, ref_rows)
    doc.heading("Among the reference run's seeds")
    if not ps:
        doc.para(f"The reference ({reference_path}) measured none of this run's (dataset, encoder, method, task): "
                 "nothing to place.")
        return
    n_ref = reference.get("seeds", 1)
    seeds = results.get("seeds", 1)
    doc.para(f"The reference is `{reference_path}` ({n_ref} seeds). Each of this run's values ("
             + ("one seed" if seeds == 1 else f"the mean over its {seeds} seeds") + ") against the reference's "
             "seeds, at the largest labelled fraction both measured; \"better than k of n\" counts the reference "
             "seeds it beats.")
    if "among the reference's seeds" in figures:
        doc.figure("this run (diamonds) among the reference's seeds (circles)", figures["among the reference's seeds"])
    t = [["encoder", "method", "task", "metric", "this run", "reference seeds (each)", "this run is better than"]]
    for p in ps:
        t.append([p["encoder"], p["method"], " ".join(x for x in (p["dataset"], p["task"]) if x),
                  f"{p['metric']} @{percent(p['fraction'])}", f"{p['value']:.4f}",
                  " / ".join(f"{v:.4f}" for v in p["reference"]), f"{p['beats']} of {len(p['reference'])}"])
    for g in gain_placements(rows, ref_rows):
        t.append([g["encoder"], g["comparison"], " ".join(x for x in (g["dataset"], g["task"]) if x),
                  f"change @{percent(g['fraction'])}", f"{g['value']:+.1f}%",
                  " / ".join(f"{v:+.1f}%" for v in g["reference"]), f"{g['beats']} of {len(g['reference'])}"])
    if len({r[0] for r in t[1:]}) == 1:  # one encoder: named in the section's text, not on every row
        t = [r[1:] for r in t]
        doc.para(f"Encoder: {ps[0]['encoder']}.")
    doc.table(t)
    diff = config_differences(results.get("config") or {}, reference.get("config") or {})
    if diff:
        shown = diff[:10]
        doc.para("The reference ran other settings, so a gap can come from them: " + "; ".join(shown)
                 + (f"; and {len(diff) - len(shown)} more" if len(diff) > len(shown) else "") + ".")
    else:
        doc.para("The reference ran the same settings (seed count aside).")


def write_report(out: Path, results: dict, figures: dict[str, Path], caption_quality: dict | None = None, pretrain_dirs: dict[str, Path] | None = None,
                 reference: dict | None = None, reference_path: str = "") -> tuple[Path, Path]:
    """report.md and report.html: what was compared and the headline first, then the finding and its checks, the
    run among a reference's seeds, the figures, and the diagnostics collapsed at the end. `figures` maps a title
    to a PNG; "data efficiency" is the headline figure."""
    rows = results["rows"]
    seeds = results.get("seeds", 1)
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed"
    over = f" (mean over {seeds} seeds)" if seeds > 1 else " (one seed)"
    f = findings(rows)
    figures = dict(figures)
    doc = Doc()
    hw = results.get("hardware")  # absent in results.json written before it was recorded
    on = (f" on {hw['cpu']} ({hw['cpu_count']} cores{', ' + hw['cuda'] if hw.get('cuda') else ''})" if hw else "")
    doc.heading("qclip study report", 1)
    doc.para(f"{len(rows)} measurements, wall time {results.get('wall_seconds', 0):.0f}s{on}, git "
             f"{results.get('git_commit', '?')}.")
    doc.heading("What was compared")
    doc.items(compared_lines(results))

    doc.heading("Headline")
    if "data efficiency" in figures:
        doc.figure("each method's metric against the share of labelled images (" + (
            "error bars: ± 1 std over seeds)" if seeds > 1 else "one seed, no error bars)"), figures.pop("data efficiency"))
    doc.para(f"At the largest labelled fraction ({spread}); **bold** = the best of each column.")
    doc.table(headline_table(rows, largest_only=True, mark_best=True))
    doc.heading("Finding", 3)
    doc.items(finding_lines(f, checks_line=False))
    line, groups = check_summary(f, seeds)
    if line:
        doc.heading("Checks", 3)
        doc.para(line)
        for summary, t in groups:
            doc.open_details(summary)
            doc.table(t)
            doc.close_details()

    if reference is not None:
        reference_section(doc, results, reference, reference_path, figures)
    figures.pop("among the reference's seeds", None)

    doc.heading("Figures")
    for title, path in figures.items():
        if title != "caption examples":
            doc.figure(title, path)
    if caption_quality or "caption examples" in figures:
        doc.heading("Captions")
        if caption_quality:
            doc.para("How well each kind of caption names the objects in its image (the world's measure; "
                     "pool images).")
            doc.table([["captions", "objects named correctly", "named objects wrong", "empty"]] + [
                [k, f"{v['objects_named_correctly']:.1%}", f"{v['named_objects_wrong']:.1%}", f"{v['empty']:.1%}"]
                for k, v in caption_quality.items()])
        if "caption examples" in figures:
            doc.figure("pool images with their raw alt-text, the captioner's caption and a reference description",
                       figures["caption examples"])

    doc.heading("Diagnostics")
    doc.para("Whether each run learned and what the heads chose; open a table to read it.")
    diagnostics = [
        (f"Every labelled fraction ({spread})", "", headline_table(rows, mark_best=True)),
        (f"Object-class mIoU ({spread})", "Mean IoU over the object classes, background (floor, wall) left out: "
         "what the encoders must tell apart.", headline_table(rows, "object_mIoU", mark_best=True)),
        (f"IoU per class at the full labelled set{over}", "", per_class_table(rows)),
        ("Did the contrastive pretraining leave chance?", "Each CLIP run's loss over the last fifth of its logged "
         "steps against the loss of an encoder that tells no pair apart (ln B for CLIP's loss, about ln B + 1 for "
         f"SigLIP's); under {LEARNED_BELOW} x chance counts as having left it. A run near chance is a baseline "
         "that did not learn, whatever its probe says.", contrastive_learning_table(pretrain_dirs or {})),
        ("Did the pretraining learn shapes?", "Per seed, each encoder's object-class mIoU over random init's of "
         f"the same seed, at the full labelled set; under {SHAPES_ABOVE}x, the seed's encoder segments the objects "
         "no better than an untrained one.", shape_learning_table(rows)),
        ("Did the probes converge?", f"A probe converged when its training loss fell by at most "
         f"{CONVERGED_MAX_DROP_PCT:g}% over the last fifth of its steps (figure 'probe training curves').",
         probe_convergence_table(rows)),
        ("Probe weight decay chosen", "The weight decay of the head kept at each labelled fraction, chosen on the "
         "selection split (seeds in order, separated by /).", probe_selection_table(rows)),
        (f"Zero-shot classification and retrieval of the CLIP runs{over}",
         "top1: zero-shot accuracy on the validation split's largest object; chance_top1: always guessing the "
         "most frequent class; chance_R@1: retrieval by chance (1 / number of images).", pretraining_table(rows)),
    ]
    for title, text, t in diagnostics:
        if len(t) > 1:
            doc.open_details(title)
            doc.para(text)
            doc.table(t)
            doc.close_details()
    doc.heading("Notes")
    doc.para(notes(results))

    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, "\n".join(doc.md))
    page = ["<!doctype html><html><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            f"<title>qclip study report</title><style>{STYLE}</style></head><body>", *doc.html, "</body></html>"]
    atomic_write_text(html_path, "\n".join(page))
    return md_path, html_path
