"""Everything `qclip run` / `qclip report` writes from a results.json: plots, report.md, report.html, and the
headline table on the console."""
from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_write_json
from .findings import finding_lines, findings, format_table, headline_table
from .page import write_report
from .plots import (bar_chart, caption_examples_figure, data_efficiency_plot, probe_curves, reference_plot,
                    training_curves)
from .reference import gain_placements, load_reference, placements


def study_run_dir(out: Path, stage: str, seed: int, encoder: str, method: str, task: str = "") -> Path:
    """Where a study keeps one run: OUT/{pretrain,transfer}/seed{S}/{encoder}-{method}[-{task}]. The study writes
    there and the report reads from there; this is the one place the layout is spelled."""
    return out / stage / f"seed{seed}" / "-".join(x for x in (encoder, method, task) if x)


CAPTION_EXAMPLES = "caption_examples.json"  # their texts and scores, so a report re-renders without the pool


def caption_examples(data: Path, n: int = 6) -> list[dict]:
    """The first `n` samples' raw, synthetic and reference captions, each with its score by the world's measure
    (objects named correctly / named objects that are wrong). Pool samples carry no reference descriptions;
    theirs is written from the scene graph here, as the world writes the curated split's."""
    import numpy as np

    from ..captions.quality import caption_quality
    from ..data.shards import ShardReader, is_dataset
    from ..data.world import describe

    if not is_dataset(data):
        return []
    out = []
    for i, s in enumerate(ShardReader(data)):
        if i >= n:
            break
        c, scene = s.captions, s.meta.get("scene")
        syn = next(iter((c.get("synthetic") or {}).values()), [""])
        texts = {"raw": (c.get("raw") or [""])[0], "synthetic": syn[0] if syn else "",
                 "reference": (c.get("reference") or [""])[0]}
        if not texts["reference"] and scene is not None:
            texts["reference"] = describe(scene, np.random.default_rng(i))
        ex = {**texts, "image": s.image, "scores": {}}
        if scene is not None:
            visible = sum(o["visible"] for o in scene["objects"])
            for kind, text in texts.items():
                recall, wrong = caption_quality(text, scene)
                ex["scores"][kind] = (f"{round(recall * visible)}/{visible} objects named"
                                      + (f", {wrong:.0%} of named wrong" if wrong is not None else ", none named"))
        out.append(ex)
    return out


def qualitative_grid(out: Path, rows: list[dict], task: str, path: Path) -> Path | None:
    """Every method's prediction of the same validation images (first encoder, first seed, the largest labelled
    fraction) side by side, from the arrays each transfer run keeps (predictions.npz)."""
    from ..transfer.visualize import load_examples, save_comparison_grid

    rs = [r for r in rows if r["task"] == task]
    if not rs:
        return None
    enc, seed, frac = rs[0]["encoder"], min(r.get("seed", 0) for r in rs), max(r["data_fraction"] for r in rs)
    methods = list(dict.fromkeys(r["method"] for r in rs if r["encoder"] == enc))
    given = {r["method"] for r in rs if r.get("given")}  # transferred once, kept under the encoder name "given"
    examples: dict[str, list[dict]] = {}
    for m in methods:
        found = sorted(study_run_dir(out, "transfer", seed, "given" if m in given else enc, m, task).glob(
            f"{task}-*-f{frac:g}/predictions.npz"))
        if found:
            examples[m] = load_examples(found[0])
    if not examples:
        return None
    first = next(iter(examples.values()))
    n = min(len(v) for v in examples.values())
    names = next((r["metrics"].get("class_names") for r in rs if r["metrics"].get("class_names")), None)
    missing = [m for m in methods if m not in examples]  # runs from before predictions.npz was kept
    title = f"{enc}, seed {seed}, {frac:.0%} of the labels" + (
        f" (no stored predictions: {', '.join(missing)})" if missing else "")
    save_comparison_grid(first[:n], {m: [e["pred"] for e in ex[:n]] for m, ex in examples.items()}, task, path,
                         title, len(names or []), names)
    return path


class ReportError(ValueError):
    """A results file the report cannot be built from; the message says how to write it again."""


def build_report(out: str | Path, results: dict | None = None, pretrain_dirs: dict[str, Path] | None = None,
                 log=print, reference: str | Path | None = None) -> Path:
    """Figures, report.md and report.html for a study folder, from its results.json (or `results`). `reference`
    (default: the run's study.reference) is another run's results.json, or its folder, whose seeds this run's
    numbers are placed among."""
    out = Path(out)
    if results is None:
        f = out / "results.json"
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: run `qclip run --out {out}` first")
        try:
            results = json.loads(f.read_text())
        except ValueError as e:
            raise ReportError(f"{f} is not complete JSON ({e}): re-run `qclip run --out {out}` (finished stages "
                              f"are reused) to write it again") from None
        if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
            raise ReportError(f"{f} holds no \"rows\" list: it is not a `qclip run` results file; re-run "
                              f"`qclip run --out {out}` to write it again")
    if pretrain_dirs is None:
        pretrain_dirs = {p.parent.name + "/" + p.name: p for p in sorted((out / "pretrain").glob("*/*")) if p.is_dir()}
    rows = results["rows"]
    if reference is None:
        reference = ((results.get("config") or {}).get("study") or {}).get("reference") or None
    ref_results = load_reference(reference) if reference else None
    figs: dict[str, Path] = {}
    if any(r["task"] in ("segmentation", "depth") for r in rows):
        figs["data efficiency"] = data_efficiency_plot(rows, out / "data_efficiency.png")
        for task in ("segmentation", "depth"):
            if any(r["task"] == task for r in rows):
                figs[f"{task} at the full labelled set"] = bar_chart(rows, task, out / f"bar_{task}.png")
    placed = placements(rows, ref_results["rows"]) if ref_results else []
    if placed:
        figs["among the reference's seeds"] = reference_plot(
            placed, out / "among_reference_seeds.png",
            "this run (one seed)" if results.get("seeds", 1) == 1 else f"this run (mean of {results['seeds']} seeds)",
            f"reference seeds ({ref_results.get('seeds', '?')})")
    # figures drawn from the run folders; a re-render without them (committed results) keeps the copies it has
    drawn: dict[str, tuple[str, Path | None]] = {}
    for task in ("segmentation", "depth"):
        drawn[f"qualitative {task}: every method on the same validation images"] = (
            f"qualitative_{task}.png", qualitative_grid(out, rows, task, out / f"qualitative_{task}.png"))
    drawn["pretraining loss per objective"] = ("training_curves.png", training_curves(
        pretrain_dirs, out / "training_curves.png") if pretrain_dirs else None)
    drawn["probe training curves"] = ("probe_curves.png", probe_curves(out / "transfer", out / "probe_curves.png")
                                      if (out / "transfer").is_dir() else None)
    for title, (name, path) in drawn.items():
        if path is None and (out / name).is_file():
            path = out / name
        if path is not None:
            figs[title] = path
    examples = caption_examples(out / "pool_captioned")
    if examples:
        figs["caption examples"] = caption_examples_figure(examples, out / "caption_examples.png")
        atomic_write_json(out / CAPTION_EXAMPLES, [{k: v for k, v in e.items() if k != "image"} for e in examples])
    elif (out / "caption_examples.png").is_file():  # a re-render without the pool (committed results): the kept copy
        figs["caption examples"] = out / "caption_examples.png"
    md, html = write_report(out, results, figs, results.get("caption_quality"), pretrain_dirs, ref_results,
                            str(reference or ""))
    log(format_table(headline_table(rows)))
    for line in finding_lines(findings(rows)):
        log("  " + line)
    if ref_results:
        for g in gain_placements(rows, ref_results["rows"]):
            log(f"  among the reference's {len(g['reference'])} seeds ({reference}): {g['encoder']} {g['task']} "
                f"{g['comparison']} {g['value']:+.1f}% here, {min(g['reference']):+.1f}% to "
                f"{max(g['reference']):+.1f}% there (better than {g['beats']} of {len(g['reference'])})")
    log(f"report: {html} (self-contained), {md}, figures {', '.join(p.name for p in figs.values())}")
    return html
