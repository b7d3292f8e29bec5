"""The report's finding: every comparison as a paired test over seeds, and data efficiency read from curves."""
from __future__ import annotations

import math

import pytest

from qclip.report.findings import (
    check_table,
    checks,
    data_efficiency,
    finding_lines,
    findings,
    one_encoder,
    paired_test,
    seed_values,
)


def _rows(method: str, task: str, values: list[float], fraction: float = 1.0, enc: str = "e") -> list[dict]:
    metric = "mIoU" if task == "segmentation" else "RMSE"
    return [{"encoder": enc, "method": method, "task": task, "data_fraction": fraction, "seed": s,
             "metrics": {metric: v}} for s, v in enumerate(values)]


def test_paired_test_matches_scipy_and_is_paired():
    from scipy import stats

    a = {0: 0.50, 1: 0.60, 2: 0.45, 3: 0.55}
    b = {0: 0.48, 1: 0.57, 2: 0.44, 3: 0.52}  # always a little lower: unpaired the spread would hide it
    t = paired_test(a, b, +1)
    ref = stats.ttest_rel(list(a.values()), list(b.values()), alternative="greater")
    assert t["p"] == pytest.approx(ref.pvalue)
    assert t["mean_diff"] == pytest.approx(0.0225)
    assert t["ci95"][0] > 0  # the interval excludes 0
    # lower is better (RMSE): sign flips the difference
    assert paired_test({0: 1.0, 1: 1.1}, {0: 1.2, 1: 1.25}, -1)["mean_diff"] == pytest.approx(0.175)


def test_seed_values_reads_one_method_task_and_fraction_in_seed_order():
    rows = (_rows("mim", "segmentation", [0.5, 0.6]) + _rows("mim", "segmentation", [0.9, 0.9], fraction=0.1)
            + _rows("mim", "depth", [1.0, 1.2]))
    rows[0], rows[1] = rows[1], rows[0]  # results.json order is not seed order
    assert seed_values(rows, "mim", "segmentation", 1.0) == {0: 0.5, 1: 0.6}
    assert list(seed_values(rows, "mim", "segmentation", 1.0)) == [0, 1]
    assert seed_values(rows, "mim", "segmentation", 0.1) == {0: 0.9, 1: 0.9}
    assert seed_values(rows, "mim", "depth", 1.0, "RMSE") == {0: 1.0, 1: 1.2}
    assert seed_values(rows, "mim", "depth", 1.0, "object_mIoU") == {}  # a metric the rows lack
    assert seed_values(rows, "random", "depth", 1.0) == {}


def test_one_encoder_picks_the_only_encoder_or_names_the_choices():
    rows = _rows("mim", "depth", [1.0], enc="a") + _rows("mim", "depth", [2.0], enc="b")
    assert one_encoder(rows, "b") == rows[1:]
    assert one_encoder(rows[:1]) == rows[:1]
    with pytest.raises(ValueError, match=r"2 encoders \(a, b\); pick one"):
        one_encoder(rows, source="x.json")
    with pytest.raises(ValueError, match="'c': not in x.json, which has a, b"):
        one_encoder(rows, "c", source="x.json")


def test_every_comparison_is_a_check_and_failures_are_listed():
    rows = (_rows("clip-synthetic", "segmentation", [0.50, 0.52, 0.51]) + _rows("clip-raw", "segmentation", [0.40, 0.41, 0.40])
            + _rows("mim", "segmentation", [0.45, 0.55, 0.52])  # noisy: synthetic is not clearly better
            + _rows("random", "segmentation", [0.30, 0.31, 0.32])
            + _rows("clip-synthetic", "depth", [1.0, 1.1, 1.05]) + _rows("clip-raw", "depth", [1.05, 1.0, 1.1]))
    cs = {c["name"]: c for c in checks(rows)}
    assert set(cs) == {"e segmentation: clip-synthetic beats clip-raw", "e segmentation: clip-synthetic beats mim",
                       "e segmentation: clip-synthetic beats random", "e segmentation: clip-raw beats random",
                       "e segmentation: mim beats random", "e depth: clip-synthetic beats clip-raw"}
    assert cs["e segmentation: clip-synthetic beats clip-raw"]["holds"] is True
    assert cs["e segmentation: clip-synthetic beats mim"]["holds"] is False
    assert cs["e depth: clip-synthetic beats clip-raw"]["holds"] is False
    assert cs["e segmentation: clip-synthetic beats clip-raw"]["rel_pct"] == pytest.approx((0.51 - 0.40333) / 0.40333 * 100, rel=1e-3)
    f = findings(rows)
    lines = finding_lines(f)
    assert any(x.startswith("4 of 6 checks hold") for x in lines)
    # the failing checks, one line per encoder and task (their full numbers are in the Checks table)
    assert lines[-2].startswith("Not holding, e segmentation: clip-synthetic beats mim (")
    assert lines[-1].startswith("Not holding, e depth: clip-synthetic beats clip-raw (") and ", p " in lines[-1]
    assert len(check_table(f)) == 7


def test_holm_correction_needs_a_smaller_p_with_more_checks():
    # one check with p ~0.04 holds alone; beside 10 others it needs p <= 0.05 / 7 (Holm) and does not hold
    syn = [0.50, 0.52, 0.49, 0.51, 0.50]
    raw = [0.49, 0.495, 0.49, 0.50, 0.495]  # differences 0.01, 0.025, 0, 0.01, 0.005: p ~0.04
    alone = checks(_rows("clip-synthetic", "segmentation", syn) + _rows("clip-raw", "segmentation", raw))
    assert alone[0]["p"] < 0.05 and alone[0]["holds"] is True
    many = _rows("clip-synthetic", "segmentation", syn) + _rows("clip-raw", "segmentation", raw)
    for m in ("a", "b", "c", "d"):
        many += _rows(m, "segmentation", [0.1, 0.2, 0.15, 0.12, 0.11])
    many += _rows("random", "segmentation", [0.6] * 5)
    c = next(c for c in checks(many) if c["b"] == "clip-raw")
    assert c["p"] == alone[0]["p"] and c["holds"] is False


def test_one_seed_tests_nothing():
    rows = _rows("clip-synthetic", "segmentation", [0.50]) + _rows("clip-raw", "segmentation", [0.40])
    f = findings(rows)
    assert f["checks"][0]["holds"] is None and f["checks"][0]["p"] is None
    assert finding_lines(f)[-1].startswith("One seed: none of the 1 checks is tested")


def test_more_labels_are_checked():
    rows = (_rows("clip-raw", "segmentation", [0.40, 0.41, 0.39], 1.0) + _rows("clip-raw", "segmentation", [0.45, 0.46, 0.44], 0.1))
    c = checks(rows)
    assert len(c) == 1 and c[0]["kind"] == "labels" and c[0]["holds"] is False
    assert "at 100% of the labels at least as good as at 10%" in c[0]["name"]


def test_data_efficiency_is_interpolated_from_the_curve():
    rows = _rows("clip-raw", "segmentation", [0.40], 1.0)
    for f, v in ((0.05, 0.20), (0.1, 0.30), (0.25, 0.50), (1.0, 0.60)):
        rows += _rows("clip-synthetic", "segmentation", [v], f)
    (e,) = data_efficiency(rows)
    # 0.40 is halfway (in value) between 0.1 and 0.25: log-linear interpolation
    f_match = math.exp((math.log(0.1) + math.log(0.25)) / 2)
    assert e["matched_at_fraction"] == pytest.approx(f_match) and e["ratio"] == pytest.approx(1 / f_match)
    assert not e["lower_bound"]
    # already above at the smallest fraction: a lower bound
    rows2 = _rows("clip-raw", "depth", [1.5], 1.0) + _rows("clip-synthetic", "depth", [1.2], 0.1) + \
        _rows("clip-synthetic", "depth", [1.0], 1.0)
    (e2,) = data_efficiency(rows2)
    assert e2["lower_bound"] and e2["ratio"] == pytest.approx(10.0)
    line = " ".join(finding_lines(findings(rows2)))
    assert "at least 10.0x" in line and "already matches clip-raw at 100% of the labels at the smallest measured fraction, 10%" in line
    assert "at at least" not in line


def test_data_efficiency_has_a_bootstrap_interval_over_seeds():
    # clip-raw 0.40 at all labels in every seed; clip-synthetic's mean curve crosses it between 0.25 and 1, but
    # seed 2 is far below: a resample that draws it twice or more (26% of them) never gets there
    raw = _rows("clip-raw", "segmentation", [0.40] * 5, 1.0)
    syn = []
    for f, vals in ((0.1, [0.36, 0.37, 0.10, 0.36, 0.35]), (0.25, [0.45, 0.44, 0.15, 0.46, 0.45]),
                    (1.0, [0.50, 0.52, 0.20, 0.51, 0.50])):
        syn += _rows("clip-synthetic", "segmentation", vals, f)
    (e,) = data_efficiency(raw + syn)
    iv = e["interval"]
    assert iv["seeds"] == [0, 1, 2, 3, 4] and iv["resamples"] == 2000 and iv["bound"] == pytest.approx(10.0)
    lo, hi = iv["ci95"]
    assert lo == 0.0 and 1.0 < e["ratio"] < hi < 10.0
    assert 0.2 < iv["share_not_reached"] < 0.33 and iv["share_at_bound"] == 0
    assert data_efficiency(raw + syn)[0]["interval"] == iv  # fixed resampling: the report is a function of rows
    line = next(x for x in finding_lines(findings(raw + syn)) if "data efficiency" in x)
    assert f"95% bootstrap interval over 5 seeds below 1x (not reached) to {hi:.1f}x" in line
    # one seed: nothing to resample, no interval
    one = (_rows("clip-raw", "depth", [1.0], 1.0) + _rows("clip-synthetic", "depth", [2.0], 0.1)
           + _rows("clip-synthetic", "depth", [0.9], 1.0))
    assert data_efficiency(one)[0]["interval"] is None
    assert "bootstrap" not in " ".join(finding_lines(findings(one)))


def test_the_box_supervision_confound_is_reported():
    from qclip.report.findings import finding_lines, findings

    def row(m, v, seed):
        return {"method": m, "encoder": "e", "task": "segmentation", "data_fraction": 1.0, "seed": seed,
                "metrics": {"mIoU": v}}

    rows = [row(m, v + 0.001 * s, s) for s in range(3) for m, v in
            (("clip-raw", 0.40), ("clip-synthetic", 0.50), ("clip-synthetic-captions-only", 0.43))]
    f = findings(rows)
    (c,) = f["without_boxes"]
    assert c["gain"] == pytest.approx(0.10) and c["kept"] == pytest.approx(0.03)
    assert any("captions-only captioner: 30% of it survives" in line for line in finding_lines(f))
    one_seed = [r for r in rows if r["seed"] == 0]  # the same means from one seed: the gain is untested
    assert any("no share given: that gain is untested (one seed)" in line for line in finding_lines(findings(one_seed)))


def test_report_notes_are_written_from_the_runs_config():
    from qclip.config import STUDY_METHODS
    from qclip.report.page import notes

    assert all(m.about for m in STUDY_METHODS.values())  # every method can be explained in the report
    results = {"config": {"study": {"methods": ["clip-raw", "mim"]},
                          "transfer": {"mode": "probe", "steps": 7, "data_fractions": [0.1, 1.0], "val_split": "dev"}}}
    text = notes(results)
    assert "clip-raw, CLIP on the pool's raw alt-text" in text and "SimMIM for hierarchical" in text
    spark = notes({**results, "config": {**results["config"], "pretrain": {"mim_hierarchical": "spark"}}})
    assert "MAE for ViTs, SparK for hierarchical towers" in spark and "SimMIM" not in spark
    assert "clip-synthetic" not in text and "boxes" not in text  # only the methods this run has
    assert "probe head per labelled fraction (10%, 100%;" in text and "for 7 steps" in text and "'s dev split" in text


def test_report_lists_the_weight_decay_each_probe_grid_kept():
    from qclip.report.page import notes, probe_selection_table

    def row(method, fraction, seed, wd):
        return {"encoder": "e", "method": method, "task": "depth", "data_fraction": fraction, "seed": seed,
                "metrics": {"RMSE": 1.0}, "probe": {"selection": {"split": "dev", "weight_decay": wd}}}

    rows = [row("clip-raw", 1.0, 1, 1.0), row("clip-raw", 1.0, 0, 10.0), row("clip-raw", 0.1, 0, 0.01),
            row("random", 1.0, 0, 0.01)]
    t = probe_selection_table(rows)
    assert t[0] == ["encoder", "task", "method", "@10%", "@100%"]
    assert t[1] == ["e", "depth", "clip-raw", "0.01", "10 / 1"]  # seeds in order
    assert t[2] == ["e", "depth", "random", "-", "0.01"]
    assert probe_selection_table([{**r, "probe": {}} for r in rows]) == []  # single-head runs: no table
    text = notes({"config": {"transfer": {"mode": "probe", "probe_weight_decays": [0.01, 10.0],
                                          "select_split": "dev", "data_fractions": [1.0]}}})
    assert "per weight decay (0.01, 10); the one best on the dev split is kept" in text
    assert "weight decay" not in notes({"config": {"transfer": {"mode": "probe", "data_fractions": [1.0]}}})


def test_report_says_which_contrastive_pretrainings_left_chance(tmp_path):
    import json
    import math

    from qclip.report.page import contrastive_learning_table, write_report

    def run(name, losses, loss="clip", summary=None):
        d = tmp_path / "pretrain" / name
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(f"pretrain:\n  loss: {loss}\n  batch_size: 64\n")
        (d / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "loss": v}) + "\n" for i, v in enumerate(losses))
                                         + json.dumps({"step": 99, "eval_R@1": 0.1}) + "\n")  # a point without a loss
        (d / "summary.json").write_text(json.dumps(summary or {"world_size": 1}))
        return d

    dirs = {"seed0/e-clip-raw": run("raw", [4.2] * 8 + [4.1, 4.0]),  # mean of the last fifth 4.05: 0.97 x ln 64
            "seed0/e-clip-synthetic": run("syn", [4.2, 3.0, 2.0, 1.5, 1.0]),
            "seed0/e-siglip": run("sig", [10.0, 6.0, 4.0, 3.0, 2.0], loss="siglip"),
            "seed0/e-mim": run("mim", [0.9, 0.2], summary={"objective": "simmim", "world_size": 1})}
    t = contrastive_learning_table(dirs)
    assert [r[0] for r in t[1:]] == ["seed0/e-clip-raw", "seed0/e-clip-synthetic", "seed0/e-siglip"]  # no MIM
    raw, syn, sig = t[1:]
    assert raw[2] == "4.050" and raw[3] == f"{math.log(64):.3f}" and raw[5].startswith("near chance")
    assert syn[2] == "1.000" and syn[5] == "left chance"
    assert sig[1] == "siglip" and float(sig[3]) == pytest.approx(math.log(64) + 1, abs=0.01) and sig[5] == "left chance"
    rows = [{"encoder": "e", "method": "clip-raw", "task": "segmentation", "data_fraction": 1.0, "seed": 0,
             "metrics": {"mIoU": 0.5}}]
    md, _ = write_report(tmp_path, {"rows": rows}, {}, pretrain_dirs=dirs)
    assert "<summary>Did the contrastive pretraining leave chance?</summary>" in md.read_text()
    assert "Did the contrastive" not in write_report(tmp_path, {"rows": rows}, {})[0].read_text()


def test_report_says_which_seeds_learned_shapes(tmp_path):
    from qclip.report.page import shape_learning_table, write_report

    def row(method, seed, obj, fraction=1.0):
        return {"encoder": "e", "method": method, "task": "segmentation", "data_fraction": fraction, "seed": seed,
                "metrics": {"mIoU": 0.5, "object_mIoU": obj}}

    rows = [row("random", 0, 0.20), row("random", 1, 0.25), row("clip-raw", 0, 0.40), row("clip-raw", 1, 0.26),
            row("clip-raw", 0, 0.01, fraction=0.1),  # only the largest fraction is read
            row("mim", 0, 0.19), row("supervised", 2, 0.6)]  # seed 2 has no random init to compare with
    t = shape_learning_table(rows)
    assert t[1] == ["e", "clip-raw", "2.00 / 1.04", "1 of 2 (seed 1)"]
    assert t[2] == ["e", "mim", "0.95", "1 of 1 (seed 0)"]
    assert len(t) == 3
    assert shape_learning_table([r for r in rows if r["method"] != "random"]) == []
    md, _ = write_report(tmp_path, {"rows": rows}, {})
    assert "<summary>Did the pretraining learn shapes?</summary>" in md.read_text()


def test_report_counts_the_probes_that_converged(tmp_path):
    from qclip.report.page import probe_convergence_table, write_report

    def row(method, fraction, seed, drop):
        return {"encoder": "e", "method": method, "task": "segmentation", "data_fraction": fraction, "seed": seed,
                "metrics": {"mIoU": 0.5}, "probe": {"loss_drop_last_fifth_pct": drop, "converged": drop <= 5.0}}

    rows = [row("clip-raw", 1.0, 0, 0.4), row("clip-raw", 0.1, 1, 7.5), row("clip-raw", 1.0, 1, -0.2),
            row("random", 1.0, 0, 1.0),
            {"encoder": "e", "method": "clip-raw", "task": "retrieval", "data_fraction": 1.0, "metrics": {}}]
    t = probe_convergence_table(rows)
    assert t[1] == ["e", "segmentation", "clip-raw", "2 of 3", "7.5% (10% of the labels, seed 1)"]
    assert t[2] == ["e", "segmentation", "random", "1 of 1", "1.0% (100% of the labels, seed 0)"]
    assert len(t) == 3
    assert probe_convergence_table([{**r, "probe": {}} for r in rows]) == []  # rows from before it was recorded
    assert "<summary>Did the probes converge?</summary>" in write_report(tmp_path, {"rows": rows}, {})[0].read_text()
