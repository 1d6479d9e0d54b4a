"""``resnetlab bench``: every key present and sane; the numbers follow their definitions."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from resnetlab.bench import matmul_gflops, parse_input_size
from resnetlab.cli import main

KEYS = (
    "model",
    "batch_size",
    "input_size",
    "train_images_per_s",
    "infer_images_per_s",
    "matmul_gflops",
    "model_gflops_per_image",
    "train_roof_fraction",
)


def test_bench_json_resnet8(capsys, monkeypatch):
    monkeypatch.setenv("GOMP_SPINCOUNT", "3000")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    rc = main(
        ["bench", "--model", "resnet8", "--batch-size", "16", "--input-size", "1x16x16", "--steps", "2",
         "--warmup", "1", "--repeats", "1", "--matmul-size", "512", "--json"]
    )
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    for k in KEYS:
        assert k in r, k
    assert r["model"] == "resnet8" and r["batch_size"] == 16 and r["input_size"] == [1, 16, 16]
    for k in KEYS[3:]:
        assert isinstance(r[k], float) and r[k] > 0, (k, r[k])
    assert 0 < r["train_roof_fraction"] < 1.5
    # the fraction is what its definition says: 3 x forward FLOPs x images/s over the roof
    expect = r["train_images_per_s"] * 3 * r["model_gflops_per_image"] / r["matmul_gflops"]
    assert r["train_roof_fraction"] == pytest.approx(expect, rel=1e-9)
    # resnet8 at 1x16x16: ~1/4 of the 3x32x32 FLOPs (0.0245 GFLOPs there)
    assert 0.004 < r["model_gflops_per_image"] < 0.008
    assert r["infer_images_per_s"] == max(r["infer_eager_images_per_s"], r["infer_optimized_images_per_s"])
    assert r["gomp_spincount"] == "3000" and r["omp_wait_policy"] is None  # the figure says what OpenMP was told


def test_bench_text_output(capsys):
    rc = main(["bench", "--model", "resnet8", "--batch-size", "8", "--steps", "1", "--warmup", "0", "--repeats", "1",
               "--matmul-size", "256", "--no-channels-last"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "% of the roof" in out and "resnet8" in out and "channels_last" not in out


def test_bench_depth_and_width_build_the_model_they_name(capsys):
    """--depth / --width reach create_model: the FLOPs are those of resnet_cifar(depth=8, width=2)
    (a width-2 ResNet-8 has ~4x the FLOPs of resnet8; the options were not there before)."""
    from resnetlab import create_model
    from resnetlab.models.profile import count_flops

    argv = ["bench", "--batch-size", "4", "--input-size", "1x16x16", "--steps", "1", "--warmup", "0", "--repeats", "1",
            "--matmul-size", "64", "--json"]
    assert main([*argv, "--model", "resnet_cifar", "--depth", "8", "--width", "2"]) == 0
    r = json.loads(capsys.readouterr().out)
    expect = count_flops(create_model("resnet_cifar", depth=8, width=2.0, in_channels=1), (1, 16, 16)) / 1e9
    assert r["model_gflops_per_image"] == pytest.approx(expect, rel=1e-9)
    assert main([*argv, "--model", "resnet8"]) == 0
    assert 3.5 < expect / json.loads(capsys.readouterr().out)["model_gflops_per_image"] < 4.5
    # --block: the 9n+2 bottleneck networks (only resnet164 could be measured)
    assert main([*argv, "--model", "resnet_cifar", "--depth", "11", "--block", "bottleneck"]) == 0
    r = json.loads(capsys.readouterr().out)
    expect = count_flops(create_model("resnet_cifar", depth=11, block="bottleneck", in_channels=1), (1, 16, 16)) / 1e9
    assert r["model_gflops_per_image"] == pytest.approx(expect, rel=1e-9)


def test_bench_echoes_model_options_and_counts_what_it_folded(capsys):
    """--norm/--depth/--width are named in the output; the optimized path says how many batch norms
    it folded, and "no batch norm to fold" when the norm is not a batch norm (it said "BN folded")."""
    argv = ["bench", "--batch-size", "4", "--input-size", "1x16x16", "--steps", "1", "--warmup", "0", "--repeats", "1",
            "--matmul-size", "64"]
    assert main([*argv, "--model", "resnet_cifar", "--depth", "8", "--width", "0.5", "--norm", "in"]) == 0
    out = capsys.readouterr().out
    assert "resnet_cifar  norm in  depth 8  width 0.5  batch 4" in out
    assert "no batch norm to fold" in out and "folded," not in out
    assert main([*argv, "--model", "resnet8", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    # resnet8: stem + 3 blocks x 2 convs = 7 conv -> BN pairs (its option-A shortcuts have no norm)
    assert r["folded_norms"] == 7 and r["model_args"] == {}
    assert main([*argv, "--model", "resnet8"]) == 0
    assert "7 batch norms folded" in capsys.readouterr().out


def test_matmul_gflops_is_plausible():
    # 2 cores of any recent x86 do between 1 and a few hundred fp32 GFLOP/s
    assert 1 < matmul_gflops(512, repeats=2) < 2000


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--input-size", "3x32"], "input size must be CxHxW"),
        (["--model", "resnet21"], "unknown model 'resnet21'"),
        (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got '0'"),
        (["--threads", "0"], "argument --threads: must be an integer >= 1, got '0'"),
        (["--warmup", "-1"], "argument --warmup: must be an integer >= 0, got '-1'"),
        # timing a compiled step with no warmup measures the compiler, not the model
        (["--compile", "--warmup", "0"], "warmup must be 1 or more with compile"),
        (["--matmul-size", "0"], "argument --matmul-size: must be an integer >= 1, got '0'"),
        (["--device", "bogus"], "device: unknown device 'bogus' (allowed: auto, cpu, cuda, cuda:N)"),
        (["--model", "resnet_cifar", "--depth", "7"], "depth must be 6n+2 with n >= 1"),
        (["--model", "resnet_cifar", "--depth", "8", "--width", "0"], "width must be > 0, got 0.0"),
        (["--model", "resnet18", "--depth", "8"], "unknown option 'depth'"),
        (["--model", "resnet_cifar", "--depth", "29"], "29 is 9n+2: with block='bottleneck'"),
        (["--model", "resnet20", "--block", "bottleneck"], "'block' is fixed by the model's layout"),
        # one image whose last feature map is 1x1: torch's "Expected more than 1 value per channel"
        (["-q", "--model", "resnet18", "--batch-size", "1", "--input-size", "3x32x32", "--steps", "1", "--warmup", "0",
          "--repeats", "1", "--matmul-size", "64"], "leaves resnet18's batch norm one value per channel"),
    ],
)
def test_bench_bad_input_is_one_line_exit_2(capsys, argv, needle):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err


def test_parse_input_size():
    assert parse_input_size("3x224x224") == (3, 224, 224)
    assert parse_input_size([1, 28, 28]) == (1, 28, 28)
    with pytest.raises(ValueError, match="CxHxW"):
        parse_input_size("0x3x3")


def test_roof_matmul_uses_tf32_only_where_the_convolutions_do(monkeypatch):
    """On CUDA cuDNN's fp32 convolutions run in TF32 by default: the roof matmul follows that
    setting there (like for like), runs strict fp32 elsewhere, and the user's flag is restored."""
    import resnetlab.bench as bench

    seen = []
    monkeypatch.setattr(bench, "_best_rate", lambda *a, **k: seen.append(torch.backends.cuda.matmul.allow_tf32) or 1e9)
    before = torch.backends.cuda.matmul.allow_tf32  # a property of torch's, not monkeypatchable
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        assert matmul_gflops(8, repeats=1, device="cpu") == 1.0
        assert seen == [False] and torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    # the CUDA branch, decided without a GPU: the roof follows cuDNN's flag there
    for flag in (True, False):
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", flag)
        assert bench._roof_tf32(torch.device("cuda")) is flag and bench._roof_tf32(torch.device("cpu")) is False


@pytest.mark.parametrize("amp,dtype", [("off", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_amp_runs_training_and_inference_in_its_dtype(monkeypatch, caplog, amp, dtype):
    """--amp autocasts the forward of both measurements (the logits come out in that dtype), and
    the roof matmul runs in the same dtype so the fraction compares like with like."""
    import resnetlab.bench as bench
    from resnetlab import create_model

    seen = []
    model = create_model("resnet8", in_channels=1)
    model.fc.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    assert bench.train_images_per_s(model, 4, (1, 8, 8), steps=1, warmup=0, repeats=1, amp=amp) > 0
    assert bench.infer_images_per_s(model, 4, (1, 8, 8), steps=1, warmup=0, repeats=1, amp=amp) > 0
    assert seen and set(seen) == {dtype}

    dtypes = []
    real = bench.matmul_gflops
    monkeypatch.setattr(bench, "matmul_gflops", lambda size, device, dtype: dtypes.append(dtype) or real(64, 1, device, dtype))
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        r = bench.run_bench("resnet8", batch_size=2, input_size="1x8x8", steps=1, warmup=0, repeats=1, amp=amp)
    assert r["amp"] == amp and r["matmul_dtype"] == str(dtype).removeprefix("torch.")
    assert dtypes == [dtype, dtype]
    # on the CPU a half-precision figure is not the trainer's speed (it trains in fp32 there): said
    assert ("the trainer trains in fp32 on the CPU" in caplog.text) == (amp != "off")


def test_bench_amp_choice_is_checked(capsys):
    assert main(["bench", "--amp", "fp8"]) == 2
    err = capsys.readouterr().err.strip()
    assert "argument --amp: invalid choice: 'fp8'" in err and "\n" not in err
    with pytest.raises(ValueError, match="amp must be one of off, bf16, fp16"):
        __import__("resnetlab.bench").bench.train_images_per_s(torch.nn.Linear(1, 1), 1, (1, 1, 1), amp="int8")


def test_measurements_run_with_cudnns_autotuner_and_the_users_flag_is_restored(monkeypatch):
    import resnetlab.bench as bench

    seen = []
    monkeypatch.setattr(bench, "train_images_per_s", lambda *a, **k: seen.append(torch.backends.cudnn.benchmark) or 100.0)
    monkeypatch.setattr(bench, "infer_images_per_s", lambda *a, **k: seen.append(torch.backends.cudnn.benchmark) or 100.0)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    bench.run_bench("resnet8", batch_size=2, input_size="1x8x8", steps=1, warmup=0, repeats=1, matmul_size=64)
    assert seen == [True, True, True] and torch.backends.cudnn.benchmark is False
