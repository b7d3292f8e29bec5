"""`report.md` and a self-contained `report.html` (figures inlined as base64 PNG; opens from disk)."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from ..atomic import atomic_write_text
from .findings import finding_lines, findings, headline_table, markdown_table

NOTES = """Methods share the pool images, the encoder architecture and the pretraining budget (train.steps x
train.batch_size, per encoder: study.encoder_train); they differ only in the training signal. clip-synthetic uses the in-repo captioner's captions
(trained on the curated split's reference descriptions and object boxes), clip-raw the pool's alt-text, clip-mix a synthetic
caption with probability study.mix_p. Baselines: random (no pretraining), supervised (multi-label objects of the
scene graph), mim (MAE for the ViT, SimMIM masked pixel regression for the MCi tower, which cannot drop tokens). Transfer trains a fresh head per data fraction for the same
iterations; fractions are nested subsets. What the direction rests on: clip-synthetic can only beat clip-raw
where the synthetic captions name more of the scene correctly than the alt-text does (the caption-quality table
above); a captioner that gets colours right but guesses shapes gives the tower no shape signal that the alt-text
lacks. Second, the probes must converge: a linear probe stopped early ranks encoders by how fast their features
are to fit, not by what they encode (the demo's probes train 200 steps at lr 1e-2 on cached features and regress
log depth, a convex problem; with 100 steps at lr 1e-3 and 64 softmax depth bins the ranking changed with the
schedule and random init came first on depth). Third, the pretraining budget per encoder: at 70 steps the
MCi's CLIP encoders probed no better than its random init over 3 seeds, at 160-200 steps the direction held (the
demo gives the MCi 160 steps via study.encoder_train, the ViT 60; benchmarks/RESULTS.md). The finding's last line says which of the paper's comparisons
hold here by more than the seed spread."""


def _scored(example: dict, kind: str) -> str:
    score = example.get("scores", {}).get(kind)
    return f"{example[kind] or '(empty)'} [{score}]" if score else (example[kind] or "(empty)")


def budget_line(results: dict) -> str:
    """The pretraining budget of each encoder, as configured (the same for every method of that encoder)."""
    cfg = results.get("config") or {}
    train, study = cfg.get("train", {}), cfg.get("study", {})
    parts = []
    for enc in study.get("encoders", []):
        t = {**train, **study.get("encoder_train", {}).get(enc, {})}
        parts.append(f"{enc} {t.get('steps')} steps x batch {t.get('batch_size')}")
    return "Pretraining budget, the same for every method of an encoder: " + "; ".join(parts) + "." if parts else ""


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).stem)}">'


def write_report(out: Path, results: dict, figures: dict[str, Path], caption_examples: list[dict],
                 caption_quality: dict | None = None, notes: str = NOTES) -> tuple[Path, Path]:
    rows = results["rows"]
    table = headline_table(rows)
    lines = finding_lines(findings(rows))
    seeds = results.get("seeds", 1)
    md = ["# qclip study report", "",
          f"{len(rows)} measurements, {seeds} seed(s), wall time {results.get('wall_seconds', 0):.0f}s, "
          f"git {results.get('git_commit', '?')}. {budget_line(results)}", "",
          "## Finding (measured in this run, next to the paper's)", "", *[f"- {x}" for x in lines], "",
          "## Results (mean ± std over seeds)", "", markdown_table(table), ""]
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
           "## Notes", "", notes, ""]
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
             "</style></head><body><h1>qclip study report</h1>",
             f"<p>{len(rows)} measurements, {seeds} seed(s), wall time {results.get('wall_seconds', 0):.0f}s, "
             f"git {html.escape(str(results.get('git_commit', '?')))}. {html.escape(budget_line(results))}</p>",
             "<h2>Finding</h2><ul>", *(f"<li>{html.escape(x)}</li>" for x in lines), "</ul>",
             "<h2>Results (mean ± std over seeds)</h2>", tbl(table)]
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
              f"<h2>Notes</h2><p>{html.escape(notes)}</p></body></html>"]
    html_path = out / "report.html"
    atomic_write_text(html_path, "\n".join(parts))
    return md_path, html_path
