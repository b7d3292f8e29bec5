"""`report.md` and a self-contained `report.html` (figures inlined as base64 PNG; opens from disk)."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from ..atomic import atomic_write_text
from ..config import STUDY_METHODS
from ..transfer.run import CONVERGED_MAX_DROP_PCT
from .findings import TEST, aggregate, check_table, finding_lines, findings, headline_table, markdown_table


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
    fractions = ", ".join(f"{f:g}" for f in transfer.get("data_fractions", []))
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


def _scored(example: dict, kind: str) -> str:
    score = example.get("scores", {}).get(kind)
    return f"{example[kind] or '(empty)'} [{score}]" if score else (example[kind] or "(empty)")


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
    t = [["encoder", "task", "method", *(f"{f:g}" for f in fracs)]]
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
                  f"{drop:.1f}% (fraction {frac:g}, seed {seed})"])
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


def write_report(out: Path, results: dict, figures: dict[str, Path], caption_examples: list[dict],
                 caption_quality: dict | None = None,
                 pretrain_dirs: dict[str, Path] | None = None) -> tuple[Path, Path]:
    rows = results["rows"]
    note = notes(results)
    seeds = results.get("seeds", 1)
    std = " ± std over seeds" if seeds > 1 else " (one seed: no spread)"
    f = findings(rows)
    lines = finding_lines(f)
    over = " (mean over seeds)" if seeds > 1 else " (one seed)"
    sections: list[tuple[str, str, list[list[str]]]] = [  # (title, text before the table, table)
        ("Checks", f"Every comparison of this run as a {TEST}; A beats B where the change is positive.",
         check_table(f) if f["checks"] else []),
        (f"Results (mean{std})", "", headline_table(rows)),
        (f"Object-class mIoU (mean{std})", "Mean IoU over the object classes, background (floor, wall) left out: "
         "what the encoders must tell apart.", headline_table(rows, "object_mIoU")),
        (f"IoU per class at the full labelled set{over}", "", per_class_table(rows)),
        ("Probe weight decay chosen", "The weight decay of the head kept at each labelled fraction, chosen on the "
         "selection split (seeds in order, separated by /).", probe_selection_table(rows)),
        ("Did the probes converge?", f"A probe converged when its training loss fell by at most "
         f"{CONVERGED_MAX_DROP_PCT:g}% over the last fifth of its steps (the curves: figure 'probe training "
         "curves').", probe_convergence_table(rows)),
        (f"Zero-shot classification and retrieval of the CLIP runs{over}",
         "top1: zero-shot accuracy on the validation split's largest object; chance_top1: always guessing the "
         "most frequent class; chance_R@1: retrieval by chance (1 / number of images).", pretraining_table(rows)),
        ("Did the contrastive pretraining leave chance?", "Each CLIP run's loss over the last fifth of its logged "
         "steps against the loss of an encoder that tells no pair apart (ln B for CLIP's loss, about ln B + 1 for "
         f"SigLIP's); under {LEARNED_BELOW} x chance counts as having left it. A run near chance is a baseline "
         "that did not learn, whatever its probe says; one that left chance may still have learned an easier cue "
         "than the shapes (next table).", contrastive_learning_table(pretrain_dirs or {})),
        ("Did the pretraining learn shapes?", "Per seed, each encoder's object-class mIoU over random init's of "
         f"the same seed, at the full labelled set; under {SHAPES_ABOVE}x, the seed's encoder segments the objects "
         "no better than an untrained one.", shape_learning_table(rows)),
    ]
    sections = [(a, b, t) for a, b, t in sections if len(t) > 1]
    hw = results.get("hardware")  # absent in results.json written before it was recorded
    on = (f" on {hw['cpu']} ({hw['cpu_count']} cores{', ' + hw['cuda'] if hw.get('cuda') else ''})" if hw else "")
    header = (f"{len(rows)} measurements, {seeds} seed(s), wall time {results.get('wall_seconds', 0):.0f}s{on}, "
              f"git {results.get('git_commit', '?')}. {budget_line(results)}")
    md = ["# qclip study report", "", header, "",
          "## Finding (measured in this run, next to the paper's)", "", *[f"- {x}" for x in lines], ""]
    for title, text, t in sections:
        md += [f"## {title}", "", *([text, ""] if text else []), markdown_table(t), ""]
    if caption_quality:
        md += ["## Caption quality (the world's measure)", "",
               "| captions | objects named correctly | named objects wrong | empty |", "|---|---|---|---|",
               *(f"| {k} | {v['objects_named_correctly']:.1%} | {v['named_objects_wrong']:.1%} | {v['empty']:.1%} |"
                 for k, v in caption_quality.items()), ""]
    if caption_examples:
        md += ["## Caption examples", "", "| raw alt-text | synthetic | reference |", "|---|---|---|",
               *("| " + " | ".join(_scored(e, k) for k in ("raw", "synthetic", "reference")) + " |"
                 for e in caption_examples), ""]
    md += ["## Figures", "", *(f"![{k}]({Path(p).name})" for k, p in figures.items()), "",
           "## Notes", "", note, ""]
    md_path = out / "report.md"
    atomic_write_text(md_path, "\n".join(md))

    def tbl(t: list[list[str]]) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in t[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in t[1:])
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>qclip study report</title><style>",
             "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}",
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px}",
             "th{background:#f3f3f3}img{max-width:100%;margin:.5em 0;border:1px solid #eee}li{margin:.3em 0}",
             "</style></head><body><h1>qclip study report</h1>", f"<p>{html.escape(header)}</p>",
             "<h2>Finding</h2><ul>", *(f"<li>{html.escape(x)}</li>" for x in lines), "</ul>"]
    for title, text, t in sections:
        parts += [f"<h2>{html.escape(title)}</h2>", *([f"<p>{html.escape(text)}</p>"] if text else []), tbl(t)]
    if caption_quality:
        q = [["captions", "objects named correctly", "named objects wrong", "empty"]] + [
            [k, f"{v['objects_named_correctly']:.1%}", f"{v['named_objects_wrong']:.1%}", f"{v['empty']:.1%}"]
            for k, v in caption_quality.items()]
        parts += ["<h2>Caption quality</h2>", tbl(q)]
    if caption_examples:
        parts += ["<h2>Caption examples</h2>", tbl([["raw alt-text", "synthetic", "reference"]] +
                                                    [[_scored(e, k) for k in ("raw", "synthetic", "reference")]
                                                     for e in caption_examples])]
    parts += ["<h2>Figures</h2>", *(f"<h3>{html.escape(k)}</h3>{_img(p)}" for k, p in figures.items()),
              f"<h2>Notes</h2><p>{html.escape(note)}</p></body></html>"]
    html_path = out / "report.html"
    atomic_write_text(html_path, "\n".join(parts))
    return md_path, html_path
