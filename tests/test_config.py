from pathlib import Path

import pytest

from qclip.config import Config, ConfigError, load_config


def test_defaults_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 3\npretrain:\n  batch_size: 32\n  lr: 1\n")
    cfg = load_config(f, ["pretrain.batch_size=64", "world.alt_text_relevance=0.5"])
    assert isinstance(cfg, Config)
    assert cfg.seed == 3 and cfg.pretrain.batch_size == 64
    assert cfg.pretrain.lr == 1.0 and isinstance(cfg.pretrain.lr, float)  # int accepted where float is expected
    assert cfg.world.alt_text_relevance == 0.5
    assert cfg.world.n_pool == Config().world.n_pool  # untouched keys keep defaults


def test_unknown_key_names_it_and_lists_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["pretrain.batchsize=64"])
    msg = str(e.value)
    assert "pretrain.batchsize" in msg and "batch_size" in msg and "lr" in msg
    f = tmp_path / "c.yaml"
    f.write_text("wrld:\n  n_pool: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'wrld'.*world"):
        load_config(f)


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match=r"pretrain.batch_size' expects int, got str 'abc'"):
        load_config(None, ["pretrain.batch_size=abc"])
    with pytest.raises(ConfigError, match="expects int"):
        load_config(None, ["pretrain.batch_size=true"])  # bools are not ints here
    with pytest.raises(ConfigError, match="is a section"), pytest.warns(DeprecationWarning):
        load_config(None, ["train=3"])  # the old section name, read as pretrain
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, ["seed.x=3"])


def test_value_checks_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="alt_text_relevance"):
        load_config(None, ["world.alt_text_relevance=2"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["pretrain.batch_size"])
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_demo_config_loads():
    import yaml

    cfg = load_config("configs/demo.yaml")
    raw = yaml.safe_load(Path("configs/demo.yaml").read_text())
    assert cfg.world.n_pool == raw["world"]["n_pool"] and cfg.study.methods == raw["study"]["methods"]


def test_base_config_is_merged_under_the_file(tmp_path):
    from qclip.config import to_dict

    (tmp_path / "base.yaml").write_text(
        "seed: 3\npretrain:\n  batch_size: 32\n  lr: 0.004\nstudy:\n  methods: [clip-raw, random]\n"
        "  encoder_train:\n    qclip-vit-tiny: {lr: 0.001, steps: 600}\n")
    (tmp_path / "child.yaml").write_text(
        "_base_: base.yaml\npretrain:\n  lr: 0.002\nstudy:\n  methods: [mim]\n"
        "  encoder_train:\n    qclip-vit-tiny: {steps: 1800}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.seed == 3 and cfg.pretrain.batch_size == 32 and cfg.pretrain.lr == 0.002  # mappings merge
    assert cfg.study.methods == ["mim"]  # lists replace, as in mmsegmentation
    assert cfg.study.encoder_train == {"qclip-vit-tiny": {"lr": 0.001, "steps": 1800}}
    same = load_config(tmp_path / "base.yaml", ["pretrain.lr=0.002", "study.methods=[mim]",
                                               "study.encoder_train.qclip-vit-tiny.steps=1800"])
    assert to_dict(cfg) == to_dict(same)
    # the shipped headline is the demo plus the README's overrides, so both spellings share stage keys
    headline = load_config("configs/headline.yaml")
    assert to_dict(headline) == to_dict(load_config("configs/demo.yaml", [
        "pretrain.steps=3600", "study.methods=[clip-raw,clip-synthetic,random,mim,supervised]",
        "transfer.probe_weight_decays=[0.01,1.0,10.0]", "transfer.data_fractions=[0.05,0.1,0.25,0.5,1.0]",
        "study.seeds=5", "study.reference="]))
    # and the ViT comparison is full.yaml's ViT at the 1,800 steps screened on dev (benchmarks/RESULTS.md)
    assert to_dict(load_config("configs/vit.yaml")) == to_dict(load_config("configs/full.yaml", [
        "study.encoders=[qclip-vit-tiny]", "study.seeds=5",
        "study.encoder_train={qclip-vit-tiny: {lr: 0.001, batch_size: 64, steps: 1800, text_lr_mult: 0.25}}"]))


def test_base_config_errors_name_the_file(tmp_path):
    (tmp_path / "child.yaml").write_text("_base_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere.yaml' \(the _base_ of .*child.yaml'\) does not exist"):
        load_config(tmp_path / "child.yaml")
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: [a.yaml]\n")
    with pytest.raises(ConfigError, match="comes back to .*remove the loop"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "bad.yaml").write_text("_base_: {x: 1}\n")
    with pytest.raises(ConfigError, match="must be a file path or a list"):
        load_config(tmp_path / "bad.yaml")
    # a base in the old section name ('train') merges under its child's 'pretrain'
    (tmp_path / "old.yaml").write_text("train:\n  batch_size: 16\n")
    (tmp_path / "new.yaml").write_text("_base_: old.yaml\npretrain:\n  lr: 0.002\n")
    with pytest.warns(DeprecationWarning):
        cfg = load_config(tmp_path / "new.yaml")
    assert (cfg.pretrain.batch_size, cfg.pretrain.lr) == (16, 0.002)
    (tmp_path / "typo.yaml").write_text("wrld:\n  n_pool: 3\n")
    (tmp_path / "uses_typo.yaml").write_text("_base_: typo.yaml\n")
    with pytest.raises(ConfigError, match="unknown config key 'wrld'"):  # a base's keys are checked too
        load_config(tmp_path / "uses_typo.yaml")


def test_float_written_without_dot(tmp_path):
    assert load_config(None, ["pretrain.lr=2e-3"]).pretrain.lr == 0.002
    (tmp_path / "c.yaml").write_text("pretrain:\n  lr: 5e-4\n")
    assert load_config(tmp_path / "c.yaml").pretrain.lr == 0.0005
    with pytest.raises(ConfigError, match="expects float"):
        load_config(None, ["pretrain.lr=fast"])


def test_encoder_train_overrides_one_encoder_and_is_validated():
    from qclip.config import encoder_train

    cfg = load_config(None, ["pretrain.steps=70", "study.encoder_train={qclip-mci-tiny: {steps: 200, lr: 3e-3}}"])
    mci, vit = encoder_train(cfg, "qclip-mci-tiny"), encoder_train(cfg, "qclip-vit-tiny")
    assert (mci.pretrain.steps, mci.pretrain.lr) == (200, 0.003) and isinstance(mci.pretrain.lr, float)
    assert vit.pretrain == cfg.pretrain and cfg.pretrain.steps == 70  # the others, and cfg itself, untouched
    with pytest.raises(ConfigError, match=r"study.encoder_train.qclip-mci-tiny.stepz.*steps"):
        load_config(None, ["study.encoder_train={qclip-mci-tiny: {stepz: 2}}"])
    with pytest.raises(ConfigError, match=r"'vit-huge' is not in study.encoders"):
        load_config(None, ["study.encoder_train={vit-huge: {steps: 2}}"])
    with pytest.raises(ConfigError, match=r"study.encoder_train.qclip-mci-tiny: pretrain.steps must be >= 1"):
        load_config(None, ["study.encoder_train={qclip-mci-tiny: {steps: 0}}"])
    with pytest.raises(ConfigError, match="set by the study"):
        load_config(None, ["study.encoder_train={qclip-mci-tiny: {caption_policy: raw}}"])
    with pytest.raises(ConfigError, match="expects a mapping"):
        load_config(None, ["study.encoder_train=[steps]"])


def test_dotted_override_reaches_into_encoder_train(tmp_path):
    from qclip.config import encoder_train

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("study:\n  encoders: [qclip-mci-tiny, qclip-vit-tiny]\n"
                        "  encoder_train:\n    qclip-vit-tiny: {lr: 0.001, steps: 5}\n")
    cfg = load_config(cfg_file, ["study.encoder_train.qclip-vit-tiny.lr=0.004",
                                 "study.encoder_train.qclip-mci-tiny.steps=7"])
    vit, mci = encoder_train(cfg, "qclip-vit-tiny"), encoder_train(cfg, "qclip-mci-tiny")
    assert (vit.pretrain.lr, vit.pretrain.steps, mci.pretrain.steps) == (0.004, 5, 7)  # the file's steps kept
    with pytest.raises(ConfigError, match=r"vit-tiny.lrr' \(did you mean 'study.encoder_train.qclip-vit-tiny.lr'"):
        load_config(cfg_file, ["study.encoder_train.qclip-vit-tiny.lrr=0.004"])


@pytest.mark.parametrize("override", ["pretrain.lr=.inf", "pretrain.lr=.nan", "pretrain.lr=-1", "pretrain.weight_decay=.nan",
                                      "pretrain.beta2=1.5", "pretrain.threads=-1", "pretrain.workers=-2",
                                      "pretrain.image_size=-1", "transfer.lr=.nan", "transfer.image_size=0",
                                      "captioner.lr=0", "captioner.width=0", "study.caption_beams=0"])
def test_values_that_would_break_a_run_silently_are_config_errors(override):
    with pytest.raises(ConfigError):
        load_config(None, [override])


@pytest.mark.parametrize("argv", [["caption", "run", "--n", "0"], ["caption", "run", "--batch-size", "0"],
                                  ["caption", "run", "--num-beams", "0"], ["caption", "run", "--top-p", "1.5"],
                                  ["eval", "--max-samples", "-5"], ["world", "--n", "-1"]])
def test_cli_counts_are_checked_before_work(argv, tmp_path, capsys):
    from qclip.cli import main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(out), *(["--data", "d", "--captioner", "c"] if argv[0] == "caption" else [])])
    assert e.value.code == 2 and not out.exists()
    assert "must be" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["eval", "--model", "m", "--data", "d"], ["export", "--model", "m", "--out", "o"]])
def test_every_command_checks_its_config(command, tmp_path, capsys):
    from qclip.cli import main

    assert main([*command, "--config", str(tmp_path / "missing.yaml")]) == 2
    assert main([*command, "bogus.key=1"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_the_old_train_section_is_read_as_pretrain_with_a_warning(tmp_path, capsys):
    old = tmp_path / "old.yaml"
    old.write_text("train:\n  steps: 7\n  batch_size: 32\n")
    with pytest.warns(DeprecationWarning, match="now 'pretrain'"):
        cfg = load_config(old, ["train.lr=0.01"])
    assert (cfg.pretrain.steps, cfg.pretrain.batch_size, cfg.pretrain.lr) == (7, 32, 0.01)
    assert "use 'pretrain:'" in capsys.readouterr().err
    both = tmp_path / "both.yaml"
    both.write_text("train:\n  steps: 7\npretrain:\n  steps: 8\n")
    with pytest.raises(ConfigError, match="merge them into 'pretrain'"):
        load_config(both)


def test_config_files_that_cannot_be_read_say_why_and_how_to_fix(tmp_path, monkeypatch):
    """A latin-1 byte, a folder named as `_base_`, an unreadable file: each a ConfigError naming the file."""
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("seed: 0\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml' is not UTF-8 text \(byte 0xe9 on line 2\); save it as UTF-8"):
        load_config(bad)
    (tmp_path / "configs").mkdir()
    child = tmp_path / "child.yaml"
    child.write_text("_base_: configs\nseed: 1\n")
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        load_config(child)
    secret = tmp_path / "secret.yaml"
    secret.write_text("seed: 0\n")
    real = Path.read_text

    def read_text(self, *a, **k):  # mode 600 of another owner (root, which runs CI, reads every file)
        if self == secret:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(ConfigError, match="secret.yaml' cannot be read .*make it readable"):
        load_config(secret)


@pytest.mark.parametrize("seed", ["-1", str(2 ** 64), str(2 ** 31)])
def test_seeds_out_of_range_are_config_errors(seed):
    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*31\)"):
        load_config(None, [f"seed={seed}"])
