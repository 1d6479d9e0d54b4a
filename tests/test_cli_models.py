"""`resnetlab models`: the JSON and table output, FLOPs, and one-line errors for model names."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import resnetlab
from resnetlab import cli
from resnetlab.models.profile import count_flops, count_params, describe_models


def _models_json(capsys, *args: str) -> list[dict]:
    capsys.readouterr()
    assert cli.main(["models", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_models_json_lists_every_model_with_its_numbers(capsys):
    rows = _models_json(capsys)
    assert [r["name"] for r in rows] == resnetlab.list_models()
    for r in rows:
        assert set(r) == {"name", "params", "flops", "macs", "input_size"} and r["macs"] * 2 == r["flops"]
        assert isinstance(r["params"], int) and isinstance(r["flops"], int) and r["flops"] > r["params"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["resnet18"]["params"] == 11_689_512
    assert by_name["resnet50"]["params"] == 25_557_032
    assert by_name["resnet18"]["input_size"] == [3, 224, 224]
    assert by_name["resnet20"]["input_size"] == [3, 32, 32]
    assert round(by_name["resnet1202"]["params"] / 1e6, 1) == 19.4


def test_flops_match_the_published_figures(capsys):
    # Two-digit depths only (resnet14 ... resnet56): cheaper than counting ResNet-1202 again.
    by_name = {r["name"]: r for r in _models_json(capsys, "resnet[1-5]?")}
    # ResNet-18 at 224: 1.82 GMACs, i.e. ~3.64 GFLOPs (a multiply-add counts 2).
    assert abs(by_name["resnet18"]["flops"] / 3.64e9 - 1) < 0.02
    # ResNet-50: 4.1 GMACs; ResNet-20 at 32x32: ~41 MMACs (He et al., Table 6).
    assert abs(by_name["resnet50"]["flops"] / 8.2e9 - 1) < 0.02
    assert abs(by_name["resnet20"]["flops"] / 0.082e9 - 1) < 0.02
    # FLOPs grow with depth within the CIFAR family.
    cifar = [by_name[f"resnet{d}"]["flops"] for d in (20, 32, 44, 56)]
    assert cifar == sorted(cifar) and len(set(cifar)) == 4


def test_text_listing_shows_macs_beside_flops_and_says_which_is_which(capsys):
    capsys.readouterr()
    assert cli.main(["models", "resnet18"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("resnet18 "))
    assert row.split()[2:4] == ["1.814", "3.628"]  # torchvision's 1.81 "GFLOPS" is the GMACs column
    assert "GFLOPs = 2 x GMACs" in out


def test_count_flops_scales_with_batch_and_input():
    model = resnetlab.create_model("resnet8")
    one = count_flops(model, (3, 32, 32))
    assert count_flops(model, (3, 32, 32), batch_size=3) == 3 * one
    assert count_flops(model, (3, 64, 64)) == pytest.approx(4 * one, rel=0.01)
    assert model.training  # the mode is restored
    assert count_params(model) == 75_290 == sum(p.numel() for p in model.parameters())


def test_models_table(capsys):
    capsys.readouterr()
    assert cli.main(["models", "resnet5*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["name", "params", "GMACs", "GFLOPs"]
    rows = {line.split()[0]: line.split() for line in out[1:-1]}
    assert set(rows) == {"resnet50", "resnet56"} and out[-1].startswith("GMACs: multiply-adds per image")
    assert rows["resnet50"][1] == "25,557,032" and rows["resnet50"][4] == "3x224x224"
    assert float(rows["resnet50"][2]) == pytest.approx(4.09, abs=0.01) and float(rows["resnet50"][3]) == pytest.approx(8.18, abs=0.01)


def test_models_pattern_without_match(capsys):
    capsys.readouterr()
    assert cli.main(["models", "--json", "vgg*"]) == 1  # like text mode (and grep): no match is exit 1
    assert json.loads(capsys.readouterr().out) == []
    assert cli.main(["models", "vgg*"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: no model matches 'vgg*'") and "`resnetlab models` lists" in err


def test_describe_models_extra_fields():
    (row,) = describe_models("resnet_cifar")
    assert row["family"] == "cifar" and "6n+2" in row["description"]


def test_models_json_as_a_subprocess():
    proc = subprocess.run(
        [sys.executable, "-m", "resnetlab", "models", "resnet20*", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["name"] for r in rows] == ["resnet20"]
    assert rows[0] == {"name": "resnet20", "params": 269_722, "flops": rows[0]["flops"], "macs": rows[0]["flops"] // 2,
                       "input_size": [3, 32, 32]}
    assert abs(rows[0]["flops"] / 0.082e9 - 1) < 0.02


def test_unknown_model_on_the_command_line_exits_2_with_one_line(capsys, tmp_path):
    capsys.readouterr()
    code = cli.main(["train", "--model", "resnet21", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "unknown model 'resnet21'" in err[0] and "'resnet20'" in err[0]
    assert not (tmp_path / "run").exists()  # rejected before anything was written


def test_library_error_from_create_model_becomes_one_cli_line(capsys, monkeypatch):
    """A ValueError raised by create_model inside a command is printed as `error: ...`, exit 2."""
    from resnetlab.models import profile

    monkeypatch.setattr(profile, "list_models", lambda pattern=None: ["resnet_cifar_typo"])
    capsys.readouterr()
    assert cli.main(["models"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("error: unknown model 'resnet_cifar_typo'; did you mean 'resnet_cifar'")


def test_models_filter_by_family():
    from resnetlab.models import list_models, model_info

    assert list_models("cifar") == [
        "resnet8", "resnet14", "resnet20", "resnet26_bottleneck2_cifar", "resnet32", "resnet38_bottleneck_cifar",
        "resnet44", "resnet56", "resnet110", "resnet164", "resnet1202", "resnet_cifar",
    ]  # fmt: skip
    assert all(model_info(n).family == "cifar" for n in list_models("cifar"))
    assert list_models("imagenet") == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
