import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import qclip_main

from qclip.cli import build_parser, main
from qclip.data.shards import ShardReader

SUBCOMMANDS = ["run", "world", "ingest", "caption", "pretrain", "teacher", "export", "push", "transfer", "eval", "report"]


HELP_PAGES = [c for c in SUBCOMMANDS if c not in ("ingest", "caption")] + [
    "ingest table", "ingest coco", "ingest img2dataset", "ingest hf",
    "caption train", "caption run", "caption score", "caption stats", "caption quality"]
# the config keys each page must list (one key of each section the command reads)
HELP_KEYS = {"run": ["world.n_pool", "captioner.steps", "pretrain.lr", "transfer.steps", "study.methods"],
             "world": ["world.colours"], "ingest table": ["ingest.shard_size"], "pretrain": ["pretrain.grad_clip"],
             "caption train": ["captioner.region_loss_weight"], "transfer": ["transfer.data_fractions"]}


def _help(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_subcommand_and_each_page_explains_itself(capsys):
    out = _help(capsys, [])
    for name in SUBCOMMANDS:
        assert name in out
    for name in HELP_PAGES:
        text = _help(capsys, name.split())
        assert "--config" in text, name
        assert "(default: )" not in text and "(default: None)" not in text, name  # only defaults worth showing
        for key in HELP_KEYS.get(name, []):  # `SUB --help` lists its config keys with their defaults
            assert f"  {key} = " in text, (name, key)
    assert "(built-in 10000)" in " ".join(_help(capsys, ["world"]).split())
    assert "qclip ingest SOURCE --help" in _help(capsys, ["ingest"])
    assert "pretrain.lr = 0.001" in _help(capsys, ["pretrain"])  # the default as the dataclass holds it


def test_each_caption_action_has_its_own_help(capsys):
    listing = _help(capsys, ["caption"])
    for action in ("train", "run", "score", "stats", "quality"):
        assert f"    {action}" in listing
    run, stats = _help(capsys, ["caption", "run"]), _help(capsys, ["caption", "stats"])
    assert "--num-beams" in run and "beams for beam search" in run and "--num-beams" not in stats
    assert "--scorer" in _help(capsys, ["caption", "score"]) and "--scorer" not in run
    with pytest.raises(SystemExit) as e:  # required per action: argparse says so before any work
        main(["caption", "run", "--data", "d", "--out", "o"])
    assert e.value.code == 2 and "--captioner" in capsys.readouterr().err


def test_a_stray_option_shows_the_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["caption", "stats", "--data", "d", "--bogus"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "usage: qclip caption stats" in err and "--bogus" in err


def test_report_without_results_fails_clearly(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "results.json not found" in capsys.readouterr().err
    assert main(["report", "--out", str(tmp_path)]) == 2  # the old spelling still works
    assert "results.json not found" in capsys.readouterr().err
    assert main(["report"]) == 2 and "qclip report RUN" in capsys.readouterr().err


def test_config_error_names_key(capsys):
    assert main(["run", "--config", "configs/demo.yaml", "pretrain.batchsize=64"]) == 2
    err = capsys.readouterr().err
    assert "pretrain.batchsize" in err and "batch_size" in err


def test_world_command_writes_provenance(tmp_path, capsys):
    out = tmp_path / "w"
    rc = main(["world", "--out", str(out), "--n", "20", "--seed", "3", "--preview", "--quiet",
               "world.n_curated=4", "world.n_dense=4", "world.n_dev=4", "world.n_val=4", "world.workers=1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "world: 36 samples (curated 4, dense 4, dev 4, val 4, pool 20)" in text
    run = json.loads((out / "run.json").read_text())
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["seed"] == 3 and cfg["world"]["n_pool"] == 20
    assert run["versions"]["torch"] and run["versions"]["open_clip_torch"] == "3.3.0" and run["git_commit"]
    assert run["hardware"]["cpu_count"] >= 1 and run["hardware"]["cpu"]  # numbers differ across machines: say which
    assert (out / "preview.png").is_file()


TINY_STUDY = ["world.n_pool=48", "world.n_curated=24", "world.n_dense=16", "world.n_dev=4", "world.n_val=12", "world.shard_size=24",
              "world.workers=1", "captioner.steps=3", "captioner.batch_size=8", "captioner.warmup_steps=1",
              "captioner.workers=0", "pretrain.steps=2", "pretrain.batch_size=8", "pretrain.warmup_steps=1", "pretrain.workers=0",
              "transfer.steps=2", "transfer.batch_size=4", "transfer.decoder_width=8", "transfer.depth_bins=8",
              "study.caption_beams=1", "study.encoders=[qclip-mci-tiny]", "transfer.data_fractions=[0.1,1.0]",
              # clip-mix runs the clip-synthetic path with another policy (tests/test_policy.py covers mix:P)
              "study.methods=[clip-raw,clip-synthetic,clip-synthetic-captions-only,random,supervised,mim]",
              "study.encoder_train={qclip-mci-tiny: {steps: 3}}", "study.captioner="]  # the study trains its captioner


@pytest.mark.slow
def test_run_study_end_to_end_cached_and_reported(tmp_path):
    """`qclip run`: every stage, results.json in the DESIGN schema, report files; a re-run with a changed transfer
    setting redoes only the transfers; `qclip report` re-renders from results.json."""
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "qclip", "run", "--config", "configs/demo.yaml", "--out", str(out), "--quiet",
           *TINY_STUDY]
    code, stdout, err = qclip_main(*cmd[3:])  # in this process (tests/slow runs `qclip run` as its own process)
    assert code == 0, err[-3000:]
    for stage in ("[1/5] world", "[2/5] captions", "[3/5] pretrain", "[4/5] transfer", "[5/5] report"):
        assert stage in stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"rows", "config", "versions", "hardware", "wall_seconds"}
    methods = {"clip-raw", "clip-synthetic", "clip-synthetic-captions-only", "random", "supervised", "mim"}
    dense = [r for r in results["rows"] if r["task"] in ("segmentation", "depth")]
    assert {r["method"] for r in dense} == methods and {r["data_fraction"] for r in dense} == {0.1, 1.0}
    assert len(dense) == 6 * 2 * 2 and all(r["encoder"] == "qclip-mci-tiny" for r in dense)
    assert {r["task"] for r in results["rows"]} >= {"retrieval", "zeroshot"}
    seg = [r for r in dense if r["task"] == "segmentation"]
    n_classes = 2 + len(results["config"]["world"]["shapes"])  # floor, wall and the demo world's eight shapes
    assert n_classes == 10 and all(len(r["metrics"]["IoU_per_class"]) == n_classes and "object_mIoU" in r["metrics"]
                                   for r in seg)
    assert all(r["probe"]["converged"] in (True, False, None) for r in dense)
    assert "synthetic:tiny" in results["caption_quality"] and "raw" in results["caption_quality"]
    # the confound arm: a second captioner without region (box) supervision, its own recaptioned pool and quality
    assert "synthetic:tiny-captions-only" in results["caption_quality"]
    cap_cfg = yaml.safe_load((out / "captioner-captions-only" / "config.yaml").read_text())["captioner"]
    assert cap_cfg["region_loss_weight"] == 0.0 and (out / "pool_captioned_captions_only" / "manifest.json").is_file()
    report_md = (out / "report.md").read_text()
    assert "with a captions-only captioner" in report_md and f"({os.cpu_count()} cores" in report_md
    for method in ("clip-raw", "supervised", "mim"):  # study.encoder_train beats pretrain.steps=2, for every method
        summary = json.loads((out / "pretrain" / "seed0" / f"qclip-mci-tiny-{method}" / "summary.json").read_text())
        assert summary["steps"] == 3, method
    for f in ("report.html", "report.md", "data_efficiency.png", "bar_segmentation.png", "bar_depth.png",
              "training_curves.png", "caption_examples.png", "probe_curves.png", "config.yaml", "run.json",
              "qualitative_segmentation.png", "qualitative_depth.png"):
        assert (out / f).is_file(), f
    from PIL import Image  # every method's predictions side by side: one column each beside image and truth
    assert Image.open(out / "qualitative_segmentation.png").width >= 220 * (2 + len({r["method"] for r in dense}))
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "clip-synthetic vs clip-raw" in html and "<img src=\"http" not in html
    assert "Object-class mIoU" in html and "IoU per class" in html and "Zero-shot classification" in html
    assert "chance_R@1" in html and "chance_top1" in html  # retrieval and zero-shot beside their chance levels
    assert "none tested, a paired test needs at least two seeds" in html  # one seed tests nothing, and says so
    # and places its numbers among the committed headline's seeds (configs/demo.yaml's study.reference)
    assert "Among the reference run&#x27;s seeds" in html and (out / "among_reference_seeds.png").is_file()
    assert "caption_examples.png" in (out / "report.md").read_text()  # the examples with their scores, once
    assert "qclip-mci-tiny 3 steps x batch 8" in html  # the budget actually configured per encoder
    # the did-it-learn table names each pretraining by seed, as the re-render does (one row per seed, none dropped)
    assert "| seed0/qclip-mci-tiny-clip-raw | clip |" in report_md
    assert "clip-synthetic" in stdout.split("[5/5] report")[1]  # the console ends with the headline table

    code, stdout2, err = qclip_main(*cmd[3:], "transfer.steps=3")  # in this process: no second ~15 s of imports
    assert code == 0, err[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["stages_run"] and all(s.startswith("transfer-") for s in run["stages_run"])
    assert "world" in run["stages_reused"] and "captioner" in run["stages_reused"]
    assert f"in {out / 'world'}, from the stage cache" in stdout2  # not the first run's "generated ... in"
    assert any(s.startswith("pretrain-") for s in run["stages_reused"])
    # the reused stages keep the seconds they took when they ran: a cached re-run still says what the study cost
    cached = json.loads((out / "results.json").read_text())["stage_seconds_cached"]
    assert {"world", "captioner", "pretrain seed0/qclip-mci-tiny-clip-raw"} <= set(cached)
    assert all(cached[k] == v for k, v in results["stage_seconds"].items() if not k.startswith("transfer")), cached
    # each stage record names its output folder, as benchmarks/study_carry.py reads it
    rec = json.loads((out / "stages" / "pretrain-seed0-qclip-mci-tiny-clip-raw.json").read_text())
    assert rec["dir"] == "pretrain/seed0/qclip-mci-tiny-clip-raw" and (out / rec["dir"]).is_dir()

    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.html").is_file()
    # as benchmarks/headline is committed: results, report and figures, no pool, no run folders
    kept = tmp_path / "committed"
    kept.mkdir()
    for f in ("results.json", "caption_examples.json", *(p.name for p in out.glob("*.png"))):
        shutil.copy(out / f, kept / f)
    assert main(["report", str(kept)]) == 0
    assert "caption_examples.png" in (kept / "report.md").read_text()  # the caption examples survive the re-render
    # so do the figures drawn from run folders (training and probe curves, qualitative grids)
    figures = {p.name for p in out.glob("*.png") if p.name in (out / "report.md").read_text()}
    assert {"training_curves.png", "probe_curves.png", "qualitative_segmentation.png"} <= figures
    assert all(name in (kept / "report.md").read_text() for name in figures), figures

    # study.captioner: a captioner folder used as it is (as the demo uses its shipped one). Without a curated split
    # to train on, the pool gets the same captions as from the study that trained it, stored under its folder name
    given = tmp_path / "captioners" / "tiny"
    shutil.copytree(out / "captioner" / "model", given)
    out2 = tmp_path / "given"
    methods = "study.methods=[clip-synthetic,random]"
    cmd2 = [str(out2) if c == str(out) else c for c in cmd[:-len(TINY_STUDY)]]
    code, stdout3, err = qclip_main(*cmd2[3:], *TINY_STUDY, methods, f"study.captioner={given}")
    assert code == 0, err[-3000:]
    assert f"captioner: local-dir:{given} as given (not trained here)" in stdout3
    assert not (out2 / "world" / "curated").exists()  # nothing trains on it: not generated
    run3 = json.loads((out2 / "run.json").read_text())
    assert "captioner" not in run3["stages_run"] and "recaption" in run3["stages_run"]

    def synthetic(pool):
        return {x.key: x.captions["synthetic"]["tiny"] for x in ShardReader(pool)}

    assert synthetic(out2 / "pool_captioned") == synthetic(out / "pool_captioned")
    code, _, err = qclip_main(*cmd2[3:], *TINY_STUDY, f"study.captioner={tmp_path}")
    assert code != 0 and "is not a captioner folder" in err, err[-2000:]


def test_parser_builds():
    assert build_parser().prog == "qclip"


def test_version(capsys):
    import pytest

    from qclip import __version__

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"qclip {__version__}"


def test_a_stage_record_without_its_folder_gains_it_when_reused(tmp_path):
    from qclip.study import StageCache

    cache = StageCache(tmp_path, fresh=False)
    assert cache.run("transfer-a", "k1", tmp_path / "transfer" / "a", lambda: {"x": 1}) == {"x": 1}
    rec = tmp_path / "stages" / "transfer-a.json"
    old = {k: v for k, v in json.loads(rec.read_text()).items() if k != "dir"}  # as written before `dir` existed
    rec.write_text(json.dumps(old))
    again = StageCache(tmp_path, fresh=False)
    assert again.run("transfer-a", "k1", tmp_path / "transfer" / "a", lambda: {"x": 2}) == {"x": 1}  # reused
    assert json.loads(rec.read_text()) == {**old, "dir": "transfer/a"}
    assert again.run("world", "k", None, lambda: {}) == {} and json.loads(
        (tmp_path / "stages" / "world.json").read_text())["dir"] is None


def test_help_version_and_config_errors_import_no_heavy_library():
    """`qclip --help`, `--version`, `SUB --help` and a config error answer without importing torch, open_clip
    or timm (their speed: benchmarks/cli_latency.py)."""
    import subprocess
    import sys

    probe = ("import sys\nfrom qclip.cli import main\nfor argv in {argvs!r}:\n    try:\n        main(argv)\n"
             "    except SystemExit:\n        pass\nprint(sorted(m for m in ('torch', 'open_clip', 'timm', 'torchvision') "
             "if m in sys.modules))")
    argvs = [["--help"], ["--version"], ["transfer", "--help"], ["run", "--help"],
             ["pretrain", "--data", "d", "--out", "o", "pretrain.batch_sise=8"], ["world", "--out", "o", "seed=-1"],
             ["transfer", "--encoder", "e", "--data", "d", "--out", "o", "transfer.eval_mode=tiles"]]
    res = subprocess.run([sys.executable, "-c", probe.format(argvs=argvs)], capture_output=True, text=True)
    assert res.stdout.strip().splitlines()[-1] == "[]", res.stdout[-500:] + res.stderr[-2000:]
    assert "did you mean 'pretrain.batch_size'" in res.stderr and "seed must be an integer" in res.stderr
