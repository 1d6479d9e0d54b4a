"""Config: defaults, YAML, overrides, did-you-mean, combinations, smoke scaling."""

from __future__ import annotations

import logging

import pytest
import yaml

from resnetlab.config import apply_overrides, config_keys, load_config, read_yaml, save_config, smoke_config, smoke_fallback
from resnetlab.errors import ConfigError


def test_defaults_and_overrides_parse_yaml_values():
    cfg = load_config(None, ["optim.lr=0.05", "model.head=[256, 128]", "augment=[flip, 'crop:padding=4']", "train.grad_clip=0.1"])
    assert cfg.optim.lr == 0.05
    assert cfg.model.head == [256, 128]
    assert cfg.augment == ["flip", "crop:padding=4"]
    assert cfg.train.grad_clip == 0.1


def test_yaml_roundtrip(tmp_path):
    src = tmp_path / "r.yaml"
    src.write_text(yaml.safe_dump({"model": {"name": "resnet8", "norm": "gn", "groups": 4}, "train": {"epochs": 2}}))
    cfg = load_config(src, ["seed=3"])
    out = tmp_path / "resolved.yaml"
    save_config(cfg, out)
    again = load_config(out)
    assert again == cfg and again.seed == 3 and again.model.groups == 4


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optim.lrr=0.1", "unknown config key 'optim.lrr'; did you mean 'optim.lr'"),
        ("trian.epochs=3", "unknown config key 'trian'"),
        ("lr=0.1", "unknown config key 'lr'; did you mean 'optim.lr'?"),  # a bare option name: its full key
        ("train.lr=0.1", "unknown config key 'train.lr'; did you mean 'optim.lr'?"),
        ("optim.lr=abc", "config optim.lr"),
        ("optim.lr=-1", "greater than 0"),
        ("model.name=resnet21", "did you mean"),
        ("model.norm=batchnorm", "unknown norm 'batchnorm'"),
        ("optim.name=rmsprop", "config optim.name"),
        ("augment=[flipp]", "flip"),
        # values that defeat the schedule or the optimizer (they used to be accepted, or failed
        # after the data loaded with torch's or Python's words)
        ("optim.betas=[1.5,0.999]", "config optim.betas.0: Input should be less than 1 (got 1.5)"),
        ("schedule.warmup_epochs=.inf", "config schedule.warmup_epochs: Input should be a finite number"),
        ("schedule.step_size=.nan", "config schedule.step_size: Input should be a finite number"),
        ("optim.lr=0.1 --set schedule.min_lr=1.0", "schedule.min_lr=1.0 is the cosine's floor and must be below the peak optim.lr=0.1"),
        ("train.epochs=2 --set schedule.warmup_epochs=5", "schedule.warmup_epochs=5.0 covers the whole run (train.epochs=2)"),
        ("schedule.name=onecycle --set schedule.warmup_epochs=1", "onecycle warms up for schedule.pct_start=0.25 of the steps"),
        ("schedule.name=multistep --set schedule.milestones_unit=iteration --set schedule.milestones=[0.5]",
         "schedule.milestones are optimizer steps, whole numbers >= 1"),
        ("data.stream_threshold_gb=0", "config data.stream_threshold_gb: Input should be greater than 0 (got 0)"),
        ("data.num_workers=-1", "config data.num_workers: Input should be greater than or equal to 0 (got -1)"),
        ("data.cache=[a]", "config data.cache: must be false, true (PATH/.resnetlab-cache) or a folder path, got ['a']"),
        ("data.cache='  '", "config data.cache: must be false, true"),
    ],
)
def test_bad_values_give_one_line(override, expected):
    with pytest.raises(ConfigError) as exc:
        load_config(None, override.split(" --set "))
    msg = str(exc.value)
    assert expected in msg
    assert "\n" not in msg


def test_a_study_file_given_as_a_training_config_names_the_study_command(tmp_path):
    study = tmp_path / "study-norm.yaml"
    study.write_text("name: norm\nbase:\n  model: {name: resnet8}\ngrid:\n  model.norm: [bn, gn]\n")
    with pytest.raises(ConfigError) as info:
        load_config(study)
    assert str(info.value) == (f"{study} is a study file (base and grid/cells), not a training config; "
                               f"run it with: resnetlab study {study}")  # fmt: skip


def test_batch_size_one_with_batchnorm_is_refused():
    with pytest.raises(ConfigError, match="batch_size=1"):
        load_config(None, ["train.batch_size=1"])
    assert load_config(None, ["train.batch_size=1", "model.norm=gn"]).train.batch_size == 1


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst)


def test_config_keys_lists_every_section():
    keys = config_keys()
    for k in ("model.name", "data.subset", "optim.lr", "schedule.milestones", "train.ema", "output.dir", "seed", "augment"):
        assert k in keys
    assert "train.progressive_resize.start_size" in keys  # keys of an optional section too


def test_optional_section_is_set_from_overrides_with_did_you_mean():
    cfg = load_config(None, ["train.progressive_resize.start_size=20"])
    assert cfg.train.progressive_resize.start_size == 20 and cfg.train.progressive_resize.full_at == 0.5
    assert load_config(None).train.progressive_resize is None
    with pytest.raises(ConfigError, match="did you mean 'train.progressive_resize.start_size'"):
        load_config(None, ["train.progressive_resize.start=20"])
    with pytest.raises(ConfigError, match="train.progressive_resize.start_size"):
        load_config(None, ["train.progressive_resize.full_at=0.5"])  # start_size is required


def test_smoke_scales_down_but_keeps_recipe():
    cfg = load_config(None, ["train.epochs=50", "train.batch_size=512", "data.image_size=256", "model.norm=gn", "schedule.name=onecycle"])
    s = smoke_config(cfg)
    assert s.train.epochs == 1 and s.train.batch_size == 64 and s.data.subset == 256 and s.data.image_size == 64
    assert s.model.norm == "gn" and s.schedule.name == "onecycle"
    spr = smoke_config(load_config(None, ["data.image_size=256", "train.progressive_resize.start_size=128"]))
    assert spr.train.progressive_resize.start_size == 32  # the same half of the capped 64-pixel size
    assert spr.train.epochs == 2  # a small epoch, then one at full size


def test_smoke_runs_in_its_own_folder_and_never_grows_the_subset():
    # the smoke run took the real run's folder (runs/<name>), so the real run was refused after it
    assert smoke_config(load_config(None, ["name=demo"])).run_name() == "demo-smoke"
    assert smoke_config(load_config(None, ["model.name=resnet8", "data.name=digits"])).run_name() == "resnet8-digits-smoke"
    assert smoke_config(smoke_config(load_config(None, ["name=demo"]))).run_name() == "demo-smoke"
    assert smoke_config(load_config(None, ["data.subset=200"])).data.subset == 200  # it became 256


def test_smoke_fallback_is_for_missing_data_not_for_a_misspelt_name(tmp_path):
    from resnetlab.config import smoke_fallback
    from resnetlab.errors import DataError

    with pytest.raises(DataError, match="unknown dataset 'fmnist'; did you mean"):
        smoke_fallback(smoke_config(load_config(None, ["data.name=fmnist"])))
    # a dataset smaller than the smoke subset trains on all of it (subset=256 of 28 images was an error)
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for j in range(12):
            from PIL import Image

            Image.new("L", (6, 6), color=j * 20).save(tmp_path / "imgs" / c / f"{j}.png")
    cfg = smoke_fallback(smoke_config(load_config(None, [f"data.name=imagefolder:{tmp_path / 'imgs'}", "data.image_size=6"])))
    assert cfg.data.name.startswith("imagefolder:") and cfg.data.subset is None


def test_streaming_keys_reach_load_dataset_and_the_cache_folder_is_absolute(tmp_path, monkeypatch):
    cfg = load_config(None)
    assert (cfg.data.stream_threshold_gb, cfg.data.cache, cfg.data.num_workers) == (2.0, False, 2)
    kw = cfg.data.load_kwargs(0)
    assert kw["stream_threshold_gb"] == 2.0 and kw["cache"] is None and "num_workers" not in kw
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["data.stream_threshold_gb=0.5", "data.cache=c/../cache", "data.num_workers=0"])
    assert cfg.data.load_kwargs(0) | {} == {**kw, "stream_threshold_gb": 0.5, "cache": str(tmp_path / "cache")}
    assert cfg.data.num_workers == 0
    assert load_config(None, ["data.cache=true"]).data.load_kwargs(0)["cache"] is True
    assert load_config(None, ["data.cache="]).data.cache is False


def test_every_config_key_is_documented():
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "CONFIG.md").read_text()
    missing = [k for k in config_keys() if f"`{k}`" not in doc]
    assert not missing, f"add these keys to docs/CONFIG.md: {missing}"


def test_boundary_values_of_the_schedule_and_dropout_and_empty_overrides():
    assert load_config(None, ["train.grad_clip="]).train.grad_clip is None  # "key=" sets None
    cfg = load_config(None, ["schedule.name=onecycle", "schedule.base_momentum=0.9", "schedule.max_momentum=0.9"])  # a flat cycle is allowed
    assert cfg.schedule.base_momentum == cfg.schedule.max_momentum == 0.9
    with pytest.raises(ConfigError, match="model.dropout"):
        load_config(None, ["model.dropout=1"])  # zeroes every feature
    assert load_config(None, ["model.dropout=0.99"]).model.dropout == 0.99


def test_smoke_uses_the_source_runs_smoke_folder_when_the_source_run_is_missing(tmp_path, caplog):
    # study-transfer --smoke needed the full source run: the source recipe's --smoke writes <name>-smoke
    import logging

    src = tmp_path / "runs" / "fmnist-pretrain"
    (tmp_path / "runs" / "fmnist-pretrain-smoke").mkdir(parents=True)
    cfg = smoke_config(load_config(None, [f"model.pretrained={src}"]))
    with caplog.at_level(logging.WARNING):
        assert smoke_fallback(cfg).model.pretrained == f"{src}-smoke"
    assert "using" in caplog.text and "the source's smoke run" in caplog.text
    src.mkdir()  # the real source run exists: it is used
    assert smoke_fallback(cfg).model.pretrained == str(src)


def test_smoke_trains_from_random_init_when_torchvision_weights_cannot_be_had(monkeypatch, caplog):
    # report 003's transfer study (torchvision ImageNet weights): offline its --smoke failed every
    # pretrained arm, so its frozen layers and heads were never run; like a missing dataset, the
    # weights are swapped out (for random init) only when they are neither cached nor downloadable
    import logging

    import resnetlab.transfer as tr
    from resnetlab.errors import CheckpointError, ResnetlabError

    cfg = smoke_config(load_config(None, ["model.pretrained=torchvision:IMAGENET1K_V1", "model.name=resnet18", "model.freeze_until=7"]))
    monkeypatch.setattr(tr, "_download_torchvision", lambda *a, **k: {})  # cached (or downloaded)
    assert smoke_fallback(cfg).model.pretrained == "torchvision:IMAGENET1K_V1"

    def offline(*a, **k):
        raise ResnetlabError("torchvision weights ResNet18_Weights.IMAGENET1K_V1 are not cached and cannot be downloaded")

    monkeypatch.setattr(tr, "_download_torchvision", offline)
    with caplog.at_level(logging.WARNING):
        out = smoke_fallback(cfg)
    assert out.model.pretrained is None and out.model.freeze_until == 7  # the rest of the recipe still runs
    assert "torchvision weights torchvision:IMAGENET1K_V1 are not cached" in caplog.text and "random initialization" in caplog.text

    def corrupt(*a, **k):
        raise CheckpointError("torchvision weights file resnet18-f37072fd.pth failed its check")

    monkeypatch.setattr(tr, "_download_torchvision", corrupt)  # a broken cached file is not hidden: the run names it
    assert smoke_fallback(cfg).model.pretrained == "torchvision:IMAGENET1K_V1"
    # an unknown weights name is left for the run's own error
    bad = smoke_config(load_config(None, ["model.pretrained=torchvision:NOPE", "model.name=resnet18"]))
    assert smoke_fallback(bad).model.pretrained == "torchvision:NOPE"


def test_amp_off_is_off_although_yaml_reads_it_as_false(tmp_path):
    # YAML 1.1 reads a bare `off` as False: `--set train.amp=off` and `amp: off` were refused
    assert load_config(None, ["train.amp=off"]).train.amp == "off"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  amp: off\n")
    assert load_config(recipe).train.amp == "off"
    with pytest.raises(ConfigError, match="config train.amp: got true .*allowed: auto, off, bf16, fp16"):
        load_config(None, ["train.amp=on"])


def test_a_key_given_twice_in_a_recipe_is_refused(tmp_path):
    # PyYAML keeps the last one: the first optim section (its lr) was dropped without a word
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 0.05\ntrain:\n  epochs: 2\noptim:\n  momentum: 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_config(recipe)
    assert str(info.value) == (f"config file {recipe}: key 'optim' appears twice (lines 1 and 5); "
                               f"the second would replace the first: merge them into one")  # fmt: skip
    recipe.write_text("train:\n  epochs: 2\n  batch_size: 8\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="key 'epochs' appears twice"):
        load_config(recipe)
    recipe.write_text("base: &b {lr: 0.05, momentum: 0.5}\noptim:\n  <<: *b\n  lr: 0.01\n")  # a merge key may be overridden
    assert read_yaml(recipe)["optim"] == {"lr": 0.01, "momentum": 0.5}


def test_string_flags_of_train_are_taken_as_typed():
    # the flags became `key=value` overrides parsed as YAML: --name 2024 was refused as a number,
    # --name 001 too, and a path's " #..." was cut off as a comment
    from resnetlab.cli import build_parser
    from resnetlab.cli.train import build_config

    argv = ["train", "--name", "001", "--data", "imagefolder:/tmp/set #2", "--data-root", "/data/on", "--freeze-until", "2", "--lr", "1e-3"]
    args = build_parser().parse_args(argv)
    cfg = build_config(args)
    assert cfg.name == "001" and cfg.data.name == "imagefolder:/tmp/set #2" and cfg.data.root == "/data/on"
    assert cfg.model.freeze_until == 2 and cfg.optim.lr == 1e-3  # typed flags keep their types
    assert build_config(build_parser().parse_args(["train", "--name", "2024"])).name == "2024"


def test_nesterov_without_sgd_momentum_is_refused():
    # it was accepted and ignored (torch's Adam has no nesterov; SGD's needs a momentum)
    with pytest.raises(ConfigError, match=r"optim.nesterov=true applies to SGD with momentum > 0 .*got optim.name=adam$"):
        load_config(None, ["optim.nesterov=true", "optim.name=adam"])
    with pytest.raises(ConfigError, match="got optim.momentum=0$"):
        load_config(None, ["optim.nesterov=true", "optim.momentum=0"])
    assert load_config(None, ["optim.nesterov=true"]).optim.nesterov


def test_grad_clip_mode_value_without_grad_clip_is_refused():
    # it was accepted and nothing was clipped
    with pytest.raises(ConfigError, match=r"^train.grad_clip_mode=value says how train.grad_clip clips, and train.grad_clip is not set"):
        load_config(None, ["train.grad_clip_mode=value"])
    assert load_config(None, ["train.grad_clip_mode=value", "train.grad_clip=0.1"]).train.grad_clip == 0.1


def test_sync_bn_with_a_norm_without_batch_statistics_is_refused():
    # it was accepted and synchronised nothing ("sync_bn: ... in 0 layers")
    for norm in ("gn", "gn-torch", "ln", "in", "none"):
        with pytest.raises(ConfigError, match=f"^train.sync_bn=true shares batch statistics between processes, and model.norm={norm} has none"):
            load_config(None, ["train.sync_bn=true", f"model.norm={norm}"])
    for norm in ("bn", "bn-torch", "bin"):
        assert load_config(None, ["train.sync_bn=true", f"model.norm={norm}"]).train.sync_bn


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["schedule.gamma=0.5"], "schedule.gamma=0.5 applies to schedule.name=step or multistep; schedule.name=cosine does not read it"),
        (["schedule.name=step", "schedule.milestones=[0.3]"], "schedule.milestones=[0.3] applies to schedule.name=multistep;"),
        (["schedule.name=multistep", "schedule.step_size=5"], "schedule.step_size=5.0 applies to schedule.name=step;"),
        (["schedule.name=onecycle", "schedule.min_lr=0.001"], "schedule.min_lr=0.001 applies to schedule.name=cosine;"),
        (["schedule.pct_start=0.3"], "schedule.pct_start=0.3 applies to schedule.name=onecycle; schedule.name=cosine"),
        (["schedule.name=constant", "schedule.cycle_momentum=false"], "schedule.cycle_momentum=false applies to schedule.name=onecycle;"),
    ],
)
def test_a_schedule_option_the_schedule_does_not_read_is_refused(overrides, expected):
    # they were accepted and ignored: --set schedule.gamma=0.5 on the default cosine changed nothing
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert str(info.value).startswith(expected)


def test_schedule_options_of_the_schedule_in_use_and_defaults_are_accepted():
    assert load_config(None, ["schedule.name=step", "schedule.gamma=0.5", "schedule.step_size=3"]).schedule.gamma == 0.5
    assert load_config(None, ["schedule.name=multistep", "schedule.milestones=[0.3]", "schedule.gamma=0.2"]).schedule.milestones == [0.3]
    assert load_config(None, ["schedule.name=onecycle", "schedule.pct_start=0.3", "schedule.cycle_momentum=false"]).schedule.pct_start == 0.3
    assert load_config(None, ["schedule.min_lr=0.001", "schedule.gamma=0.1"]).schedule.min_lr == 0.001  # gamma at its default


def test_an_option_of_another_optimizer_is_refused():
    # optim.momentum with adam (meant as beta1?) and optim.betas with sgd were accepted and ignored
    with pytest.raises(ConfigError, match=r"^optim.momentum=0.5 is SGD's; optim.name=adam does not read it \(its momentum is optim.betas\[0\], now 0.9\)$"):
        load_config(None, ["optim.name=adam", "optim.momentum=0.5"])
    with pytest.raises(ConfigError, match=r"^optim.betas=\[0.8, 0.99\] are Adam's and AdamW's; optim.name=sgd does not read them"):
        load_config(None, ["optim.betas=[0.8, 0.99]"])
    assert load_config(None, ["optim.name=adamw", "optim.betas=[0.8, 0.99]"]).optim.betas == (0.8, 0.99)
    assert load_config(None, ["optim.name=adam", "optim.momentum=0.9"]).optim.name == "adam"  # the default value


def test_smoke_scales_the_augmentations_pixel_sizes_with_the_image():
    # smoke_config shrank 256-pixel images to 64 and kept center-crop:size=224: --smoke failed with
    # "size=224 is larger than the image 64x64" for a recipe that trains
    from resnetlab.data.augment import output_shape

    aug = ["resize:size=240", {"center-crop": {"size": [200, 224]}}, "flip", "cutout:size=32", "crop:padding=4"]
    cfg = load_config(None, ["data.image_size=256", f"augment={aug}"])
    s = smoke_config(cfg)
    assert s.augment == ["resize:size=60", "center-crop:size=(50,56)", "flip", "cutout:size=8", "crop"]
    assert output_shape(s.augment, (3, 64, 64), train=True) == (3, 50, 56)
    plain = load_config(None, ["data.image_size=256", "augment=[flip, {crop: {padding: 8}}]"])
    assert smoke_config(plain).augment == plain.augment  # nothing to scale: as the recipe wrote it


def test_an_override_inside_a_value_names_the_value():
    # augment.0=flip made a mapping {'0': 'flip'}: "augmentation '0': parameters must be a mapping"
    with pytest.raises(ConfigError) as info:
        load_config(None, ["augment.0=flip"])
    assert str(info.value) == "override 'augment.0=flip': 'augment' is a value, not a section; set it whole: augment=VALUE (e.g. augment=[flip, 'crop:padding=4'])"
    with pytest.raises(ConfigError, match=r"^override 'model.head.0=5': 'model.head' is a value, not a section; set it whole: model.head=VALUE$"):
        load_config(None, ["model.head.0=5"])
    assert load_config(None, ["train.progressive_resize.start_size=16"]).train.progressive_resize.start_size == 16


def test_train_flags_are_taken_as_typed_not_parsed_as_yaml(tmp_path):
    # the short flags went through YAML: 'imagefolder:PATH #2' lost ' #2' (a comment), a data root
    # with ': ' became a mapping, and --name 007 the integer 7
    from resnetlab.cli import build_parser
    from resnetlab.cli.train import build_config

    folder, root = tmp_path / "birds #2", tmp_path / "data: old"
    argv = ["train", "--data", f"imagefolder:{folder}", "--data-root", str(root), "--name", "007", "--model", "resnet18",
            "--freeze-until", "7", "--norm", "gn", "--lr", "1e-5", "--subset", "200"]  # fmt: skip
    cfg = build_config(build_parser().parse_args(argv))
    assert (cfg.data.name, cfg.data.root, cfg.name) == (f"imagefolder:{folder}", str(root), "007")
    assert (cfg.model.freeze_until, cfg.model.norm, cfg.optim.lr, cfg.data.subset) == (7, "gn", 1e-5, 200)


@pytest.mark.parametrize("flag,expected", [("1", 1), ("1.0", 1.0), ("0.5", 0.5), ("300", 300), ("300.0", 300)])
def test_subset_flag_means_what_data_subset_means(flag, expected):
    # --subset 1 was read as the fraction 1.0 (every image) where data.subset=1 is one image
    from resnetlab.cli import build_parser
    from resnetlab.cli.train import collect_overrides

    args = build_parser().parse_args(["train", "--subset", flag])
    assert collect_overrides(args) == [f"data.subset={expected}"]
    assert load_config(None, collect_overrides(args)).data.subset == load_config(None, [f"data.subset={flag}"]).data.subset
    for bad in ("inf", "nan"):  # "data.subset.int ... (got 'inf')" named a type the user never wrote
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", "--subset", bad])


def test_set_on_a_text_key_takes_the_value_as_typed():
    # --set went through YAML: name=2024 became an int and was refused as "not a valid string",
    # name=001 the run "1", a date a datetime, and a path lost what followed " #"
    assert load_config(None, ["name=2024"]).name == "2024"
    assert load_config(None, ["name=001"]).name == "001"
    assert load_config(None, ["name=2024-01-01"]).name == "2024-01-01"
    assert load_config(None, ["data.root=/data/birds #2"]).data.root == "/data/birds #2"
    assert load_config(None, ["output.dir=1e3"]).output.dir == "1e3"
    assert load_config(None, ['name="quoted"']).name == "quoted"  # quotes still mean YAML
    assert load_config(None, ["name=null"]).name is None
    assert load_config(None, ["optim.lr=1e-2"]).optim.lr == 0.01  # numbers stay numbers


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "a\\b"])
def test_a_run_name_that_is_a_path_is_refused_and_a_recorded_one_stays_readable(name):
    # --name ../x wrote the run beside output.dir, not in it
    with pytest.raises(ConfigError, match=r"^name: a run name is one non-empty folder name under output.dir .* use --out PATH or output.dir$"):
        load_config(None, [f"name={name}"])
    from resnetlab.config import config_from_dict

    assert config_from_dict({"name": name}, recorded=True).name == name  # a run of an earlier version


def test_smoke_of_a_small_photo_folder_fits_its_batch_and_caps_the_default_224_pixels(tmp_path):
    # --smoke on a folder of a few dozen photos was refused ("train.batch_size=64 is larger than
    # the training split (60 images)"), and trained at the folder's default 224 pixels, not 64
    from PIL import Image

    from resnetlab.data import load_dataset

    for split, n in {"flat": 20, "split/train": 20, "split/val": 4, "split/test": 4}.items():
        for c in ("a", "b", "c"):
            (tmp_path / split / c).mkdir(parents=True)
            for j in range(n):
                Image.new("RGB", (70 + j, 90), color=(j * 10, 40, 80)).save(tmp_path / split / c / f"{j}.jpg")
    for folder, train_size in (("flat", 43), ("split", 60)):  # flat: 60 - 12 test - 5 val; split: all of train/
        cfg = smoke_config(load_config(None, [f"data.name=imagefolder:{tmp_path / folder}", "augment=[random-resized-crop:size=224]"]))
        assert cfg.data.image_size == 64 and cfg.augment == ["random-resized-crop:size=64"]
        cfg = smoke_fallback(cfg)
        s = load_dataset(cfg.data.name, **cfg.data.load_kwargs(cfg.seed))
        assert len(s.train) == train_size and cfg.train.batch_size == train_size
        assert s.image_shape == (3, 64, 64)
    # a folder with a subset and a validation hold-out: the batch is the split's size exactly
    cfg = smoke_fallback(smoke_config(load_config(None, [f"data.name=imagefolder:{tmp_path / 'flat'}", "data.subset=30"])))
    assert cfg.train.batch_size == len(load_dataset(cfg.data.name, **cfg.data.load_kwargs(cfg.seed)).train) < 30
    # a large dataset keeps the smoke batch of 64
    assert smoke_fallback(smoke_config(load_config(None, ["data.name=digits"]))).train.batch_size == 64


def test_an_unknown_activation_is_refused_with_the_config():
    # it was accepted here and refused only when the model was built, after the data had loaded
    with pytest.raises(ConfigError, match=r"model.act: unknown activation 'rleu'; did you mean 'relu'.*\(allowed: relu, leaky_relu, gelu, silu, elu, mish\)"):
        load_config(None, ["model.act=rleu"])
    assert load_config(None, ["model.act=GELU"]).model.act == "GELU"  # the model reads it case-blind


def test_the_smoke_probe_of_the_dataset_logs_no_dataset_line(caplog):
    # `train --smoke` printed the probe's "dataset fashion-mnist: 60000 train / 0 val ..." before
    # the run's own line, which read as if the run had no validation split
    import logging

    with caplog.at_level(logging.INFO, logger="resnetlab"):
        cfg = smoke_fallback(smoke_config(load_config(None, ["data.name=digits"])))
    assert cfg.data.name == "digits" and not [r for r in caplog.records if r.getMessage().startswith("dataset ")]
    assert logging.getLogger("resnetlab.data.datasets").level == logging.NOTSET  # put back


def test_an_empty_run_name_and_a_seed_outside_numpys_range_are_refused():
    # --name '' fell back to <model>-<data> without a word; --seed -1 failed later as "cannot split
    # 1437 images ... with a stratified hold-out", which pointed at the wrong fix
    from resnetlab.config import config_from_dict

    for name in ("", "  "):
        with pytest.raises(ConfigError, match=r"^name: a run name is one non-empty folder name under output.dir"):
            config_from_dict({"name": name})
    for seed in (-1, 2**32):
        with pytest.raises(ConfigError, match=r"^config seed: Input should be (greater|less) than or equal to"):
            load_config(None, [f"seed={seed}"])
    assert load_config(None, [f"seed={2**32 - 1}"]).seed == 2**32 - 1


def test_aug_flag_replacing_a_recipes_augmentations_says_so(tmp_path, caplog):
    """--aug sets augment whole: the recipe's crop and flip were dropped without a word."""
    from resnetlab.cli import build_parser
    from resnetlab.cli.train import build_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text("augment:\n  - crop: {padding: 2}\n  - flip\n")
    parser = build_parser()
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        cfg = build_config(parser.parse_args(["train", "-c", str(recipe), "--aug", "cutout:size=3"]))
    assert [str(a) for a in cfg.augment] == ["cutout:size=3"]
    assert "--aug replaces the recipe's augment; to keep the rest of it, add --aug crop:padding=2 --aug flip" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnetlab"):  # only what is left out is named
        build_config(parser.parse_args(["train", "-c", str(recipe), "--aug", "flip", "--aug", "cutout:size=3"]))
    assert "to keep the rest of it, add --aug crop:padding=2\n" in caplog.text + "\n"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnetlab"):  # the recipe's list again, added to, or no recipe: no word
        build_config(parser.parse_args(["train", "-c", str(recipe), "--aug", "crop:padding=2", "--aug", "flip"]))
        build_config(parser.parse_args(["train", "-c", str(recipe), "--aug", "crop:padding=2", "--aug", "flip", "--aug", "erasing"]))
        build_config(parser.parse_args(["train", "--aug", "flip"]))
    assert "replaces" not in caplog.text
