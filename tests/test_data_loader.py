"""Loaders: determinism, exact resume, sharding, eval path, the augment-preview command."""

from __future__ import annotations

import matplotlib.image as mpimg
import logging

import pytest
import torch
from conftest import write_png_folder

from resnetlab.cli import main
from resnetlab.data import build_loader, derive_seed, load_dataset, preprocess
from resnetlab.errors import DataError

AUG = ["crop:padding=2", "flip", "rotation:degrees=10", "color-jitter", "cutout:size=4", "salt-pepper:amount=0.02"]


@pytest.fixture(scope="module")
def synth():
    return load_dataset("synthetic:3x16x16:10:400", val_fraction=0.1, seed=0)


def _epoch(loader, epoch, start=0, with_dropout=False):
    out = []
    for x, y, idx in loader.iter_epoch(epoch, start_step=start):
        # What the training step would draw next (dropout) must also be reproducible.
        out.append((x.clone(), y.clone(), idx.clone(), torch.rand(3) if with_dropout else None))
    return out


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) and torch.equal(p[2], q[2])
        and (p[3] is None or torch.equal(p[3], q[3]))
        for p, q in zip(a, b)
    )


def test_batches_shape_dtype_layout(synth):
    dl = build_loader(synth.train, batch_size=64, augment=AUG, mean=synth.mean, std=synth.std)
    assert len(dl) == len(synth.train) // 64  # drop_last in training
    x, y, idx = next(dl.iter_epoch(0))
    assert x.dtype == torch.float32 and x.shape == (64, 3, 16, 16)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert y.dtype == torch.int64 and torch.equal(y, synth.train.targets[idx])
    ev = build_loader(synth.test, batch_size=64, train=False, mean=synth.mean, std=synth.std)
    assert len(ev) == -(-len(synth.test) // 64)  # keeps the last partial batch
    assert sum(len(i) for _, _, i in ev.iter_epoch(0)) == len(synth.test)


def test_same_seed_same_batches_other_seed_differs(synth):
    mk = lambda seed: build_loader(synth.train, 32, augment=AUG, mean=synth.mean, std=synth.std, seed=seed)  # noqa: E731
    a, b, c = _epoch(mk(5), 2, with_dropout=True), _epoch(mk(5), 2, with_dropout=True), _epoch(mk(6), 2)
    assert _same(a, b)
    assert not torch.equal(a[0][2], c[0][2])
    # Different epochs shuffle differently; each epoch is a permutation of the whole split.
    e3 = _epoch(mk(5), 3)
    assert not torch.equal(a[0][2], e3[0][2])
    assert sorted(torch.cat([t[2] for t in a]).tolist()) == sorted(set(torch.cat([t[2] for t in a]).tolist()))


def test_resume_at_step_equals_tail_of_full_epoch(synth):
    dl = build_loader(synth.train, 32, augment=AUG, mean=synth.mean, std=synth.std, seed=1)
    full = _epoch(dl, 4, with_dropout=True)
    torch.manual_seed(12345)  # whatever the RNG state before resuming, the tail is the same
    tail = _epoch(build_loader(synth.train, 32, augment=AUG, mean=synth.mean, std=synth.std, seed=1), 4, start=7, with_dropout=True)
    assert _same(full[7:], tail)
    assert list(build_loader(synth.train, 32).iter_epoch(0, start_step=len(dl))) == []
    with pytest.raises(DataError, match="start_step"):
        next(dl.iter_epoch(0, start_step=len(dl) + 1))


def test_augmentation_is_actually_applied(synth):
    plain = build_loader(synth.train, 32, mean=synth.mean, std=synth.std, seed=1)
    aug = build_loader(synth.train, 32, augment=AUG, mean=synth.mean, std=synth.std, seed=1)
    (xp, _, ip), (xa, _, ia) = next(plain.iter_epoch(0)), next(aug.iter_epoch(0))
    assert torch.equal(ip, ia) and (xp - xa).abs().mean() > 0.1
    # Without augmentation the batch is exactly the normalized uint8 images.
    assert torch.allclose(xp, preprocess(synth.train.images[ip], synth.mean, synth.std), atol=1e-6)


def test_two_ranks_cover_disjoint_halves_of_one_permutation(synth):
    n = len(synth.train)
    r0 = build_loader(synth.train, 16, augment="flip", seed=3, rank=0, world_size=2)
    r1 = build_loader(synth.train, 16, augment="flip", seed=3, rank=1, world_size=2)
    single = build_loader(synth.train, 16, seed=3)
    i0, i1 = r0.epoch_indices(1), r1.epoch_indices(1)
    assert len(i0) == len(i1) == n // 2 and len(r0) == len(r1) == (n // 2) // 16
    assert not set(i0.tolist()) & set(i1.tolist())
    perm = single.epoch_indices(1)
    assert torch.equal(i0, perm[0::2][: n // 2]) and torch.equal(i1, perm[1::2][: n // 2])
    # Eval sharding is complete and disjoint.
    e0 = build_loader(synth.test, 16, train=False, rank=0, world_size=2).epoch_indices(0)
    e1 = build_loader(synth.test, 16, train=False, rank=1, world_size=2).epoch_indices(0)
    assert sorted(e0.tolist() + e1.tolist()) == list(range(len(synth.test)))
    with pytest.raises(DataError, match="rank"):
        build_loader(synth.train, 16, rank=2, world_size=2)


def test_eval_path_is_deterministic_and_in_order(synth):
    spec = AUG + ["resize:size=12", "center-crop:size=10"]
    ev = build_loader(synth.test, 50, train=False, augment=spec, mean=synth.mean, std=synth.std, seed=0)
    torch.manual_seed(1)
    a = _epoch(ev, 0)
    torch.manual_seed(2)
    b = _epoch(build_loader(synth.test, 50, train=False, augment=spec, mean=synth.mean, std=synth.std, seed=9), 3)
    assert _same(a, b)
    assert torch.equal(torch.cat([t[2] for t in a]), torch.arange(len(synth.test)))
    assert a[0][0].shape == (50, 3, 10, 10) and ev.output_shape == (3, 10, 10)


def test_loader_argument_errors(synth):
    with pytest.raises(DataError, match="batch_size"):
        build_loader(synth.train, 0)
    with pytest.raises(DataError, match="mean/std"):
        build_loader(synth.train, 8, mean=[0.5], std=[0.5])
    with pytest.raises(DataError, match="larger than the image"):
        build_loader(synth.train, 8, augment="crop:size=32")


def test_loader_device_auto_is_resolved_and_an_unknown_device_is_one_line(synth):
    """``device="auto"`` as in predict and load_checkpoint: the GPU when there is one, else the CPU
    (it reached torch.device("auto"): a RuntimeError listing every device type torch knows)."""
    from resnetlab.errors import ConfigError

    x, _, _ = next(build_loader(synth.train, 8, device="auto").iter_epoch(0))
    assert x.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match=r"device: unknown device 'gpu0' \(allowed: auto, cpu, cuda, cuda:N\)"):
        build_loader(synth.train, 8, device="gpu0")


def test_derive_seed_depends_on_every_part():
    seeds = {derive_seed(0, e, s) for e in range(5) for s in range(5)}
    assert len(seeds) == 25 and derive_seed(1, 2) != derive_seed(1, 2, 0)
    assert all(0 <= v < 2**63 for v in seeds)


def test_augment_preview_cli_grid(tmp_path, capsys):
    out = tmp_path / "grid.png"
    rc = main(["augment-preview", "--data", "digits", "--aug", "crop:padding=1", "--aug", "flip:p=1 cutout:size=3",
               "--out", str(out), "--n", "3", "--seed", "1"])
    assert rc == 0 and out.is_file() and "wrote" in capsys.readouterr().out
    img = mpimg.imread(out)
    assert img.shape[1] > img.shape[0]  # 5 columns (original, 3 augmentations, all) x 3 rows
    from resnetlab.data.preview import preview_columns

    cols = preview_columns(load_dataset("digits", val_fraction=0), ["crop:padding=1", "flip:p=1 cutout:size=3"], n=3, seed=1)
    assert [t for t, _ in cols] == ["original", "crop:padding=1", "flip:p=1.0", "cutout:size=3", "all"]
    assert torch.equal(cols[2][1], torch.flip(cols[0][1], dims=[-1]))
    capsys.readouterr()  # the direct load_dataset's log line above
    assert main(["augment-preview", "--data", "digits", "--aug", "flp", "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown augmentation 'flp'") and err.count("\n") == 1  # before the dataset's log line
    before = out.read_bytes()
    assert main(["augment-preview", "--data", "digits", "--aug", "flip", "--out", str(out)]) == 2
    assert "already exists; use --overwrite" in capsys.readouterr().err and out.read_bytes() == before
    # without a suffix the file is grid.png (matplotlib's): refused the same way, and named as written
    assert main(["augment-preview", "--data", "digits", "--aug", "flip", "--out", str(tmp_path / "grid")]) == 2
    assert "grid.png already exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["augment-preview", "--data", "digits", "--aug", "flip", "--out", str(tmp_path / "g2")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'g2.png'}" and (tmp_path / "g2.png").is_file()


def test_augment_preview_says_when_n_is_more_than_the_training_images(caplog):
    from resnetlab.data.preview import preview_columns

    s = load_dataset("synthetic:1x8x8:2:12", val_fraction=0, seed=0)
    with caplog.at_level(logging.WARNING, logger="resnetlab"):  # it was clamped without a word
        cols = preview_columns(s, "flip", n=50)
    assert cols[0][1].shape[0] == len(s.train)
    assert f"n=50 is more than the {len(s.train)} training images: the preview shows all {len(s.train)}" in caplog.text


def test_reseed_seeds_the_generator_of_the_batchs_gpu(monkeypatch):
    """torch.cuda.manual_seed seeds the *current* GPU only: a loader on cuda:1 (a torchrun rank,
    or one process on a second GPU) must seed cuda:1's generator, under which its augmentation
    and dropout draw. Recorded with stand-ins, as no test needs a GPU."""
    import contextlib
    from types import SimpleNamespace

    from resnetlab.data.loader import _BaseLoader

    current, seeded = [None], []

    @contextlib.contextmanager
    def device(d):
        before, current[0] = current[0], d
        yield
        current[0] = before

    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: seeded.append((current[0], seed)))
    _BaseLoader._reseed(SimpleNamespace(device=torch.device("cuda", 1)), 1234)
    assert seeded == [(torch.device("cuda", 1), 1234)]


def test_evaluation_shards_of_an_odd_split_report_their_own_length():
    test = load_dataset("synthetic:3x8x8:2:165", val_fraction=0).test
    assert len(test) == 33
    lengths = []
    for rank in (0, 1):
        dl = build_loader(test, 16, train=False, rank=rank, world_size=2)
        batches = list(dl.iter_epoch(0))
        assert len(dl) == len(batches)
        lengths.append(sum(len(idx) for _, _, idx in batches))
    assert lengths == [17, 16]  # every test image is evaluated once across the two ranks


def test_augmentation_draws_differ_between_epochs():
    """Step k of epoch 1 must not repeat step k of epoch 0's crops and flips (identical images
    leave only the augmentation to differ, whatever the shuffle)."""
    s = load_dataset("synthetic:3x16x16:10:128", val_fraction=0, seed=0)
    s.train.images[:] = s.train.images[0]
    dl = build_loader(s.train, 32, augment="crop:padding=2 flip", seed=1)
    x0, x1 = next(dl.iter_epoch(0))[0], next(dl.iter_epoch(1))[0]
    assert torch.equal(next(dl.iter_epoch(0))[0], x0)  # the same epoch repeats exactly
    assert not torch.equal(x0, x1)


def test_streaming_without_augmentation_draws_like_in_memory_and_resumes_exactly(tmp_path):
    """No augmentation, so only the reseed makes the step's dropout depend on (seed, epoch, step):
    it was skipped without augmentation ops, and each streaming DataLoader iterator (an epoch, a
    validation) drew its workers' seed from the global RNG, so streaming and in-memory runs and a
    mid-epoch resume diverged."""
    name = write_png_folder(tmp_path / "imgs")
    mem = load_dataset(name, image_size=16, val_fraction=0.25, seed=0)
    big = load_dataset(name, image_size=16, val_fraction=0.25, seed=0, stream_threshold_gb=1e-9)
    assert mem.train.in_memory and not big.train.in_memory and big.train.paths == mem.train.paths
    kw = dict(mean=mem.mean, std=mem.std, seed=2)
    ref = _epoch(build_loader(mem.train, 4, **kw), 1, with_dropout=True)
    torch.manual_seed(7)  # another global RNG state before the epoch: the same draws
    got = _epoch(build_loader(big.train, 4, num_workers=1, **kw), 1, with_dropout=True)
    assert len(ref) == 6 and _same(ref, got)
    state = torch.get_rng_state()
    assert len(list(build_loader(big.val, 8, train=False, num_workers=1, **kw).iter_epoch(0))) == 1
    assert torch.equal(torch.get_rng_state(), state)  # a validation pass leaves the global RNG alone
    torch.manual_seed(12345)
    assert _same(ref[3:], _epoch(build_loader(big.train, 4, num_workers=0, **kw), 1, start=3, with_dropout=True))
