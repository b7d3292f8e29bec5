"""The study report reads at a glance: what was compared and the headline first, best values marked, checks
grouped (one line with one seed), bars from zero with their values, fractions as percentages, one depth colour
map, a loss per axis, a one-seed run among a reference's seeds; and it renders in a real browser."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from qclip.report import plots
from qclip.report.findings import headline_table
from qclip.report.page import write_report
from qclip.report.reference import config_differences, gain_placements, placements

FRACTIONS = (0.05, 0.1, 0.25, 1.0)
# mIoU at the full labelled set per method (depth RMSE is derived: lower for the better methods)
LEVEL = {"clip-raw": 0.40, "clip-synthetic": 0.44, "random": 0.28, "mim": 0.30}


def study_rows(seeds: int, shift: float = 0.0) -> list[dict]:
    rows = []
    for s in range(seeds):
        for m, top in LEVEL.items():
            for f in FRACTIONS:
                miou = top * (0.7 + 0.3 * f) + shift + 0.004 * s
                rows.append({"encoder": "enc", "method": m, "task": "segmentation", "data_fraction": f, "seed": s,
                             "metrics": {"mIoU": miou}})
                rows.append({"encoder": "enc", "method": m, "task": "depth", "data_fraction": f, "seed": s,
                             "metrics": {"RMSE": 1.5 - miou}})
    return rows


def results(seeds: int, shift: float = 0.0, steps: int = 1200) -> dict:
    return {"rows": study_rows(seeds, shift), "seeds": seeds,
            "config": {"seed": 0, "world": {"n_pool": 4000, "image_size": 64, "n_dense": 500, "n_val": 300},
                       "pretrain": {"steps": steps, "batch_size": 32, "workers": 2},
                       "transfer": {"mode": "probe", "steps": 200, "data_fractions": list(FRACTIONS)},
                       "study": {"encoders": ["enc"], "methods": list(LEVEL), "seeds": seeds}}}


@pytest.fixture
def drawn(monkeypatch):
    """Every figure the report's plots draw, kept open for the test to read."""
    figs = []

    def keep(fig, path):
        figs.append(fig)
        fig.savefig(path, format="png", dpi=40)
        return path

    monkeypatch.setattr(plots, "_save", keep)
    return figs


def test_the_report_opens_with_what_was_compared_and_the_headline(tmp_path):
    md, _ = write_report(tmp_path, results(1), {})
    text = md.read_text()
    order = [text.index(h) for h in ("## What was compared", "## Headline", "### Finding", "### Checks",
                                     "## Diagnostics", "## Notes")]
    assert order == sorted(order)
    for m in LEVEL:  # each method defined in one line at the top, not only in the notes
        assert re.search(rf"^- \*\*{m}\*\*: \S", text, re.M), m
    assert "- **Data**: the embedded procedural world: 4,000 pool images at 64 px" in text
    assert "- **Budget**: pretraining, the same for every method of an encoder: enc 1200 steps x batch 32." in text
    assert "(5%, 10%, 25%, 100% of the labelled images)" in text  # fractions as percentages
    assert "- **Seeds**: 1 (seed 0)" in text


def test_the_best_value_of_each_column_is_marked():
    t = headline_table(study_rows(2), largest_only=True, mark_best=True)
    assert t[0] == ["encoder", "method", "RMSE dep @100%", "mIoU seg @100%"]
    bold = {(r[1], i) for r in t[1:] for i, c in enumerate(r) if c.startswith("**") and c.endswith("**")}
    assert bold == {("clip-synthetic", 2), ("clip-synthetic", 3)}  # lowest RMSE, highest mIoU
    assert all("**" not in c for r in headline_table(study_rows(2)) for c in r)  # the console table is plain


def test_one_seed_collapses_the_checks_to_one_line_that_says_how_to_test_them(tmp_path):
    text = write_report(tmp_path, results(1), {})[0].read_text()
    checks = text.split("### Checks")[1].split("##")[0]
    assert "none tested, a paired test needs at least two seeds" in checks and "`--seeds 5`" in checks
    assert "| check | verdict" not in text and "untested" not in text


def test_several_seeds_group_the_checks_by_family(tmp_path):
    text = write_report(tmp_path, results(3), {})[0].read_text()
    summaries = re.findall(r"<summary>(.*?)</summary>", text.split("### Checks")[1].split("## ")[0])
    assert [s.split(":")[0] for s in summaries] == [
        "clip-synthetic against every other method", "every other pretraining against random init (a baseline "
        "below random init is broken, not a finding)", "more labels against fewer (each method at the largest "
        "labelled fraction against the smallest)"]
    assert summaries[0].startswith("clip-synthetic against every other method: 6 of 6 hold")
    assert "checks hold (one-sided paired t-test" in text


def test_bars_start_at_zero_with_value_labels_and_say_what_the_error_bars_are(tmp_path, drawn):
    plots.bar_chart(study_rows(3), "segmentation", tmp_path / "bar.png")
    ax = drawn[-1].axes[0]
    assert ax.get_ylim()[0] == 0
    labels = sorted(float(t.get_text()) for t in ax.texts)
    assert labels == sorted(round(0.44 + 0.004, 3) if m == "clip-synthetic" else round(v + 0.004, 3)
                            for m, v in LEVEL.items())  # each bar's mean over seeds 0-2 (0 + 0.004 + 0.008) / 3
    assert "error bars: ± 1 std over 3 seeds" in ax.get_title()
    plots.bar_chart(study_rows(1), "depth", tmp_path / "bar1.png")
    assert "one seed: no error bars" in drawn[-1].axes[0].get_title()


def test_the_data_efficiency_axis_reads_in_percent(tmp_path, drawn):
    plots.data_efficiency_plot(study_rows(2), tmp_path / "eff.png")
    fig = drawn[-1]
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["5%", "10%", "25%", "100%"]
    assert fig.legends[0].get_title().get_text() == "error bars: ± 1 std over 2 seeds"


def test_each_pretraining_objective_gets_its_own_axis(tmp_path, drawn):
    def run(name, objective=None):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "loss": 4.0 / (i + 1)}) + "\n"
                                                 for i in range(5)))
        (d / "summary.json").write_text(json.dumps({"objective": objective} if objective else {"steps": 5}))
        (d / "config.yaml").write_text("pretrain:\n  loss: clip\n")
        return d

    plots.training_curves({"seed0/enc-clip-raw": run("a"), "seed0/enc-clip-synthetic": run("b"),
                           "seed0/enc-mim": run("c", "spark")}, tmp_path / "curves.png")
    fig = drawn[-1]
    assert [ax.get_title() for ax in fig.axes] == ["CLIP (InfoNCE)", "SparK (masked-patch MSE)"]
    assert [len(ax.lines) for ax in fig.axes] == [2, 1]
    assert all(ax.get_ylabel() == "training loss" for ax in fig.axes)  # raw losses, no division by the first
    assert "supervised" not in fig._suptitle.get_text()


def test_depth_is_drawn_in_one_colour_map_with_a_colour_bar(tmp_path, world_dir, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.axes
    import numpy as np

    from qclip.data.palette import DEPTH_CMAP
    from qclip.data.world_shards import write_preview
    from qclip.transfer.visualize import save_comparison_grid

    seen, bars = [], []
    imshow, colorbar = matplotlib.axes.Axes.imshow, matplotlib.figure.Figure.colorbar

    def spy(self, x, *a, **k):
        im = imshow(self, x, *a, **k)
        if np.asarray(x).ndim == 2 and np.issubdtype(np.asarray(x).dtype, np.floating):  # depth, not class ids
            seen.append(im.get_cmap().name)
        return im

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", spy)
    monkeypatch.setattr(matplotlib.figure.Figure, "colorbar",
                        lambda self, *a, **k: bars.append(1) or colorbar(self, *a, **k))
    write_preview(world_dir, tmp_path / "preview.png", n=2)
    depth = np.linspace(1, 5, 64, dtype=np.float32).reshape(8, 8)
    save_comparison_grid([{"image": np.zeros((8, 8, 3), np.uint8), "target": depth}], {"m": [depth]}, "depth",
                         tmp_path / "grid.png")
    assert seen and set(seen) == {DEPTH_CMAP}
    assert len(bars) == 3  # a bar per preview row, one per grid row


def test_a_run_is_placed_among_a_reference_runs_seeds(tmp_path, drawn):
    mine, ref = results(1, shift=0.01), results(5, steps=3600)
    ps = placements(mine["rows"], ref["rows"])
    syn = next(p for p in ps if p["method"] == "clip-synthetic" and p["task"] == "segmentation")
    assert syn["fraction"] == 1.0 and len(syn["reference"]) == 5
    assert syn["beats"] == 3  # +0.01 beats seeds 0-2 (+0, +0.004, +0.008), not 3-4 (+0.012, +0.016)
    dep = next(p for p in ps if p["method"] == "clip-synthetic" and p["task"] == "depth")
    assert dep["beats"] == 3  # lower RMSE is better: the same seeds
    gains = gain_placements(mine["rows"], ref["rows"])
    assert {g["task"] for g in gains} == {"segmentation", "depth"} and all(len(g["reference"]) == 5 for g in gains)
    assert config_differences(mine["config"], ref["config"]) == ["pretrain.steps: 1200 here, 3600 in the reference"]
    fig = plots.reference_plot(ps, tmp_path / "among.png", "this run", "reference")
    assert fig.is_file()
    md, _ = write_report(tmp_path, mine, {"among the reference's seeds": fig}, reference=ref,
                         reference_path="ref/results.json")
    text = md.read_text()
    assert "## Among the reference run's seeds" in text and "among.png" in text
    assert "| clip-synthetic | segmentation | mIoU @100% |" in text and "| 3 of 5 |" in text and "Encoder: enc." in text
    assert "pretrain.steps: 1200 here, 3600 in the reference" in text


def test_a_missing_reference_fails_before_the_study_trains(tmp_path):
    from qclip.config import Config, ConfigError
    from qclip.study import preflight

    cfg = Config()
    cfg.study.reference = str(tmp_path / "nowhere" / "results.json")
    with pytest.raises(ConfigError, match="study.reference: cannot read .*nowhere/results.json"):
        preflight(cfg, log=lambda _: None)


def chromium() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


# runs in the page once it has loaded: every image decoded, the page no wider than the window, no figure wider
# than the text column; the verdict goes into the DOM, which --dump-dom prints
PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const col = document.body.clientWidth;
  const out = {images: imgs.length,
    broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
    page: document.documentElement.scrollWidth, window: window.innerWidth,
    wide_figures: imgs.filter(i => i.getBoundingClientRect().width > col + 1).map(i => i.alt)};
  const pre = document.createElement('pre'); pre.id = 'qclip-check'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""


def browser_check(page: Path, width: int) -> dict:
    probe = page.with_name(page.stem + "-probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    res = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          f"--window-size={width},1000", "--virtual-time-budget=10000", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="qclip-check">(.*?)</pre>', res.stdout)
    assert found, res.stderr[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"'))


def test_the_report_renders_in_headless_chromium(tmp_path):
    """A one-seed run with a reference, as `make demo` writes it: every figure loads and nothing overflows, at a
    laptop's width and a narrow window's. .ci/run installs Debian's chromium and requires this test to run."""
    if chromium() is None:
        if os.environ.get("QCLIP_REQUIRE_BROWSER"):
            pytest.fail("no chromium on PATH: .ci/run installs it (apt-get install chromium)")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    from qclip.report.build import build_report

    ref = tmp_path / "reference"
    ref.mkdir()
    (ref / "results.json").write_text(json.dumps(results(5, steps=3600)))
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results(1, shift=0.01)))
    page = build_report(run, reference=ref, log=lambda _: None)
    html = page.read_text()
    assert html.count("<img ") == 4  # data efficiency, two bar charts, the reference placement: each once
    # and the committed five-seed headline, re-rendered: every figure a study draws (8), the wide diagnostics
    committed = tmp_path / "headline"
    shutil.copytree(Path(__file__).parents[1] / "benchmarks" / "headline", committed,
                    ignore=shutil.ignore_patterns("report.*"))
    headline = build_report(committed, log=lambda _: None)
    for p, n in ((page, 4), (headline, 8)):
        for width in (1280, 700):
            got = browser_check(p, width)
            assert got["images"] == n and got["broken"] == [], got
            assert got["page"] <= got["window"], got  # no horizontal scrolling: wide tables scroll in their box
            assert got["wide_figures"] == [], got


def test_caption_examples_draw_what_the_font_can():
    from qclip.report.plots import drawable

    assert drawable("a red cube 👌\x12 café") == "a red cube ?? café"  # emoji and control characters


def test_values_are_placed_only_among_the_same_datasets_seeds():
    mine = [{**r, "dataset": "ade20k"} for r in study_rows(1)]
    assert placements(mine, study_rows(5)) == []  # a user's ADE20k against the world's headline: nothing
    both = placements(mine, [{**r, "dataset": "ade20k"} for r in study_rows(5)])
    assert both and {p["dataset"] for p in both} == {"ade20k"}
    assert gain_placements(mine, [{**r, "dataset": "ade20k"} for r in study_rows(5)])
