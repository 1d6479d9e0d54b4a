"""Augmentations by name: parsing, errors, and what each one does to a batch."""

from __future__ import annotations

import pytest
import torch

from resnetlab.data import AUGMENT_NAMES, build_augment, parse_augment
from resnetlab.data.augment import output_shape
from resnetlab.errors import DataError


def _batch(n: int = 16, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, c, h, w), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
def test_spec_forms_agree():
    a = parse_augment(["crop:padding=2,padding_mode=reflect", "flip"])
    b = parse_augment("crop:padding=2,padding_mode=reflect; flip")
    c = parse_augment([{"crop": {"padding": 2, "padding_mode": "reflect"}}, {"flip": None}])
    assert a == b == c
    assert a[0].params == {"padding": 2, "size": None, "padding_mode": "reflect", "p": 1.0}
    assert a[1].params == {"p": 0.5}
    assert parse_augment(None) == [] and parse_augment([]) == []
    rrc = parse_augment("random-resized-crop:scale=(0.5,1.0),ratio=[1,1],size=24")[0]
    assert rrc.params["scale"] == (0.5, 1.0) and rrc.params["ratio"] == (1.0, 1.0) and rrc.params["size"] == 24
    assert parse_augment("hflip")[0].name == "flip"  # alias
    assert str(parse_augment("crop:padding=2")[0]) == "crop:padding=2"


@pytest.mark.parametrize(
    "spec, match",
    [
        ("flp", r"unknown augmentation 'flp'; did you mean 'flip'\?.*allowed: blur"),
        ("flip:p=-0.1", r"p=-0.1 is out of range \(allowed: \[0.0, 1.0\]\)"),
        ("flip:p=1.5", "out of range"),
        ("crop:pad=4", r"no parameter 'pad'.*allowed: padding, size, padding_mode, p"),
        ("crop:padding=-1", "padding=-1 must be an int >= 0"),
        ("crop:padding_mode=wrap", "allowed: constant, reflect, replicate"),
        ("rotation:degrees=-5", "degrees=-5"),
        ("color-jitter:hue=0.7", "hue=0.7"),
        ("random-resized-crop:scale=(0.9,0.1)", "min > max"),
        ("blur:kernel=4", "odd int"),
        ("salt-pepper:amount=2", "amount=2"),
        ("resize", "needs size"),
        ("center-crop:size=-3", "size=-3"),
        ("flip:p", "key=value"),
        ("cutout:value=300", r"'cutout': value=300 is out of range \(allowed: \[0.0, 1.0\]\)"),  # kornia's words before
        ("erasing:value=-5", "'erasing': value=-5 is out of range"),
        ("cutout:size=0", r"size=0 must be a positive int \(the side of the square hole\)"),  # it offered a pair, then refused one
        ("cutout:size=(2,3)", "must be a positive int"),
        ("flip:p=0.5,p=1", "parameter 'p' is given twice; keep one"),  # the last one won
        ("rotation:degrees=nan", r"degrees='nan' is not a number or a pair \(allowed: a number in"),
        ("rotation:degrees=(20,-10)", "min > max"),
        ("rotation:degrees=(-200,10)", r"out of range \(allowed: \[-180.0, 180.0\]\)"),
        ("rotation:degrees=big", r"degrees='big' is not a number or a pair \(allowed: a number in \[0.0, 180.0\], or \(min, max\) within \[-180.0, 180.0\]\)"),
        ("color-jitter:hue=(-0.6,0.1)", "hue="),
        ("erasing:value=noise", r"value='noise' is not a fill value \(allowed: a number in \[0, 1\], or random\)"),
        ("cutout:value=random", r"value='random' is not a fill value \(allowed: a number in \[0, 1\]\)"),
        ({"crop": 4}, "must be a mapping"),
        ({"crop": {}, "flip": {}}, "exactly one key"),
    ],
)
def test_bad_specs_raise_one_line(spec, match):
    with pytest.raises(DataError, match=match) as err:
        parse_augment(spec)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("crop:size=41", r"larger than the image 32x32 padded by 4 \(allowed: <= 40x40\)"),
        ("center-crop:size=33", "larger than the image"),
        ("cutout:size=40", r"larger than the image 32x32 \(allowed: 1..32\)"),
        ("blur:kernel=41", r"larger than the image 32x32 \(allowed: an odd int 1..31\)"),
    ],
)
def test_params_that_do_not_fit_the_image(spec, match):
    with pytest.raises(DataError, match=match):
        build_augment(spec, (3, 32, 32))


def test_grayscale_color_jitter_allows_only_brightness_contrast():
    aug = build_augment("color-jitter", (1, 8, 8))  # defaults: saturation/hue dropped for gray
    assert aug(_batch(4, 1, 8, 8)).shape == (4, 1, 8, 8)
    with pytest.raises(DataError, match="grayscale allows brightness and contrast only"):
        build_augment("color-jitter:saturation=0.5", (1, 8, 8))


# ---------------------------------------------------------------------------------------------
# Behaviour of each augmentation
# ---------------------------------------------------------------------------------------------
def test_every_name_builds_and_keeps_batch_size():
    for name in AUGMENT_NAMES:
        spec = f"{name}:size=16" if name in ("resize", "center-crop") else name
        x = _batch(5)
        y = build_augment(spec, (3, 32, 32))(x)
        assert y.shape[:2] == (5, 3) and torch.isfinite(y).all(), name


def test_flip_p1_equals_torch_flip_and_p0_is_identity():
    x = _batch()
    assert torch.equal(build_augment("flip:p=1", (3, 32, 32))(x), torch.flip(x, dims=[-1]))
    assert torch.equal(build_augment("flip:p=0", (3, 32, 32))(x), x)
    torch.manual_seed(0)
    y = build_augment("flip", (3, 32, 32))(_batch(200))
    flipped = sum(bool(torch.equal(y[i], torch.flip(_batch(200)[i], dims=[-1]))) for i in range(200))
    assert 70 < flipped < 130  # per-sample coin flips at p=0.5


def test_crop_is_a_shifted_window_of_the_padded_image():
    x = _batch(12)
    y = build_augment("crop:padding=4", (3, 32, 32))(x)
    assert y.shape == x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    offsets = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(9) for dx in range(9) if torch.allclose(padded[i, :, dy : dy + 32, dx : dx + 32], y[i])]
        assert hits, f"sample {i} is not a window of the padded image"
        offsets.add(hits[0])
    assert len(offsets) > 3  # per-sample offsets, not one for the batch
    assert torch.equal(build_augment("crop:padding=0", (3, 32, 32))(x), x)  # no padding, full size: identity
    assert build_augment("crop:padding=2,size=24", (3, 32, 32))(x).shape == (12, 3, 24, 24)


def test_rotation_respects_degrees_and_p():
    x = _batch(8)
    assert torch.allclose(build_augment("rotation:degrees=0,p=1", (3, 32, 32))(x), x, atol=1e-5)
    assert torch.equal(build_augment("rotation:degrees=45,p=0", (3, 32, 32))(x), x)
    y = build_augment("rotation:degrees=45,p=1", (3, 32, 32))(x)
    assert (y - x).abs().mean() > 0.05
    # A rotated image keeps its centre pixel (rotation about the centre) for odd sizes.
    z = _batch(4, 1, 33, 33)
    assert torch.allclose(build_augment("rotation:degrees=90,p=1", (1, 33, 33))(z)[..., 16, 16], z[..., 16, 16], atol=1e-4)


def test_torchvision_ranges_and_fills_are_accepted():
    # torchvision's RandomRotation((-10, 20)), ColorJitter(brightness=(0.5, 1.5)), RandomCrop(10,
    # padding=4) of an 8x8 image and RandomErasing(value="random") were refused
    torch.manual_seed(0)
    x = torch.rand(256, 3, 8, 8)
    params = build_augment("rotation:degrees=(-10,20),p=1", (3, 8, 8)).ops[0]._param_generator.degrees
    assert params.tolist() == [-10.0, 20.0]
    flat = torch.full((512, 3, 4, 4), 0.5)
    y = build_augment("color-jitter:brightness=(0.5,1.5),contrast=0,saturation=0,hue=0", (3, 4, 4))(flat)
    f = y.mean(dim=(1, 2, 3)) / 0.5  # the brightness factor of each image
    assert 0.5 <= float(f.min()) < 0.6 and 1.4 < float(f.max()) <= 1.5 and abs(float(f.mean()) - 1.0) < 0.05
    assert build_augment("crop:padding=4,size=10", (3, 8, 8))(x).shape == (256, 3, 10, 10)
    erased = build_augment("erasing:value=random,p=1,scale=(0.2,0.2)", (3, 8, 8))(torch.zeros(64, 3, 8, 8))
    changed = erased != 0
    assert changed.any(dim=(1, 2, 3)).float().mean() > 0.9 and 0.3 < float(erased[changed].mean()) < 0.7  # uniform noise
    assert str(parse_augment("erasing:value=random")[0]) == "erasing:value=random"


def test_color_jitter_brightness_moves_the_mean_per_sample():
    x = torch.full((64, 3, 8, 8), 0.5)
    y = build_augment("color-jitter:brightness=0.4,contrast=0,saturation=0,hue=0", (3, 8, 8))(x)
    factors = y.mean(dim=(1, 2, 3)) / 0.5
    assert factors.min() >= 0.6 - 1e-4 and factors.max() <= 1.4 + 1e-4
    assert factors.std() > 0.1  # different factor per sample
    assert torch.equal(build_augment("color-jitter:brightness=0,contrast=0,saturation=0,hue=0", (3, 8, 8))(x), x)


def test_resize_center_crop_and_random_resized_crop_shapes():
    x = _batch(4, 3, 32, 48)
    assert build_augment("resize:size=16", (3, 32, 48))(x).shape == (4, 3, 16, 24)  # shorter side
    assert build_augment("resize:size=(10,12)", (3, 32, 48))(x).shape == (4, 3, 10, 12)
    cc = build_augment("center-crop:size=24", (3, 32, 48))(x)
    assert torch.allclose(cc, x[:, :, 4:28, 12:36])
    assert build_augment("random-resized-crop:size=20", (3, 32, 48))(x).shape == (4, 3, 20, 20)
    assert output_shape("resize:size=16 center-crop:size=12 flip", (3, 32, 48)) == (3, 12, 12)


def test_spaces_after_commas_and_colons_stay_in_one_item():
    # they split the item: "unknown augmentation 'contrast=0.4'"
    items = parse_augment("color-jitter:brightness=0.4, contrast=0.3 crop: padding=2 random-resized-crop:scale=(0.5, 1.0), ratio=(1,1)")
    assert [str(i) for i in items] == ["color-jitter:brightness=0.4,contrast=0.3", "crop:padding=2",
                                       "random-resized-crop:scale=(0.5,1.0),ratio=(1.0,1.0)"]


def test_color_jitter_on_grayscale_accepts_saturation_or_hue_turned_off():
    for spec in ("color-jitter:hue=0", "color-jitter:saturation=0", "color-jitter:saturation=0,hue=0", "color-jitter"):
        assert build_augment(spec, (1, 8, 8))(torch.rand(2, 1, 8, 8)).shape == (2, 1, 8, 8)
    with pytest.raises(DataError, match="saturation/hue need RGB images"):
        build_augment("color-jitter:hue=0.2", (1, 8, 8))


def test_center_crop_is_placed_as_torchvision_places_it():
    import torchvision.transforms.v2.functional as TF

    x = torch.arange(8 * 8, dtype=torch.uint8).view(1, 1, 8, 8)
    for size in ((5, 3), (4, 4), (7, 8), (8, 1)):
        got = build_augment(f"center-crop:size={size}", (1, 8, 8), train=False)(x)
        assert torch.equal(got, TF.center_crop(x, list(size))), size  # kornia was a pixel off for odd differences
        assert got.dtype == torch.uint8


def test_random_resized_crop_of_the_whole_image_is_torchvisions_resize():
    # scale=ratio=1 crops the whole image: what is left is the resize, which must use
    # torchvision's geometry (align_corners=False); kornia's default differed by up to 0.5
    import torch.nn.functional as F

    x = torch.rand(4, 3, 16, 16)
    got = build_augment("random-resized-crop:size=24,scale=(1.0,1.0),ratio=(1.0,1.0)", (3, 16, 16))(x)
    torch.testing.assert_close(got, F.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False), atol=1e-5, rtol=0)


def test_random_resized_crop_to_a_smaller_size_is_antialiased_as_torchvision():
    # shrinking 32 -> 8 without antialiasing kept pixel-level noise (std ~0.2 against ~0.07)
    import torchvision.transforms.v2.functional as TF

    x = torch.rand(6, 3, 32, 32)
    got = build_augment("random-resized-crop:size=8,scale=(1.0,1.0),ratio=(1.0,1.0)", (3, 32, 32))(x)
    want = TF.resize(x, [8, 8], antialias=True)
    assert got.shape == (6, 3, 8, 8)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)  # torchvision's antialiased resize, to the pixel


def test_random_resized_crop_of_part_of_the_image_is_torchvisions_resized_crop():
    # the box was cut out at the image size (upsampled without antialiasing) and then shrunk:
    # resampled twice, blurrier than torchvision's one antialiased resize of the box
    import torchvision.transforms.v2.functional as TF

    x = torch.rand(4, 3, 64, 64)
    for side, out in ((32, 32), (48, 24)):  # a box of side x side pixels, resized to out x out
        area = side * side / (64 * 64)
        torch.manual_seed(0)
        y = build_augment(f"random-resized-crop:size={out},scale=({area},{area}),ratio=(1,1)", (3, 64, 64))(x)
        for i in range(len(x)):
            wants = [TF.resized_crop(x[i], t, l, side, side, [out, out], antialias=True)
                     for t in range(65 - side) for l in range(65 - side)]  # fmt: skip
            assert min((y[i] - w).abs().max().item() for w in wants) < 1e-5, (side, out, i)


def test_resize_is_torchvisions_antialiased_resize():
    import torchvision.transforms.v2.functional as TF

    x = torch.rand(3, 3, 32, 48)
    torch.testing.assert_close(build_augment("resize:size=12", (3, 32, 48))(x), TF.resize(x, [12, 18], antialias=True), atol=1e-5, rtol=0)
    # an int size: the longer side is truncated as torchvision truncates it (it was rounded: 16x12, 224x299)
    for h, w, size in ((17, 13, 12), (375, 500, 224), (13, 17, 12)):
        x = torch.rand(2, 3, h, w)
        y = build_augment(f"resize:size={size}", (3, h, w))(x)
        torch.testing.assert_close(y, TF.resize(x, size, antialias=True), atol=1e-5, rtol=0)


def test_cutout_erases_one_square_of_the_given_size():
    x = torch.ones(10, 3, 32, 32)
    y = build_augment("cutout:size=8", (3, 32, 32))(x)
    zeros = (y == 0).all(dim=1).sum(dim=(1, 2))  # erased in every channel
    assert zeros.tolist() == [64] * 10
    assert torch.equal(build_augment("cutout:size=8,p=0", (3, 32, 32))(x), x)
    default = build_augment("cutout", (3, 32, 32))(x)  # the default hole: half the image side, 16x16
    assert (default == 0).all(dim=1).sum(dim=(1, 2)).tolist() == [256] * 10
    v = build_augment("erasing:scale=(0.1,0.1),ratio=(1,1),value=0.5,p=1", (3, 32, 32))(x)
    assert ((v == 0.5).all(dim=1).sum(dim=(1, 2)).float().mean() - 0.1 * 1024).abs() < 20


def test_erasing_draws_its_boxes_as_torchvision():
    # kornia drew the ratio uniformly on each side of 1: with the symmetric default (0.3, 3.3)
    # tall boxes (h/w > 2) were about twice as common as wide ones (w/h > 2)
    torch.manual_seed(0)
    x = torch.ones(4000, 1, 32, 32)
    hole = build_augment("erasing:p=1", (1, 32, 32))(x.contiguous(memory_format=torch.channels_last))[:, 0] == 0
    h, w = hole.any(2).sum(1).float(), hole.any(1).sum(1).float()
    assert (h * w == hole.sum((1, 2))).all() and (h > 0).all()  # one rectangle in every image
    ratio = h / w
    assert abs((ratio > 2).float().mean() - (ratio < 0.5).float().mean()) < 0.03  # log-uniform ratio: ~0.19 each
    assert abs(ratio.log().mean()) < 0.05
    area = h * w / 1024
    assert area.min() >= 0.02 - 0.01 and area.max() <= 0.33 + 0.03 and abs(area.mean() - 0.175) < 0.01
    top = hole.any(2).float().argmax(1)
    assert top.min() == 0 and (top + h == 32).any()  # both extremes of the position are reached
    on = build_augment("erasing", (1, 32, 32))(x)[:, 0].eq(0).any(2).any(1).float().mean()
    assert abs(on - 0.5) < 0.04  # p
    # a box that cannot fit in 10 draws leaves the image as it is, as torchvision does
    assert torch.equal(build_augment("erasing:scale=(0.9,1),ratio=(3,3),p=1", (1, 32, 32))(x[:8]), x[:8])
    # a box never spans a whole side (torchvision keeps h < H and w < W): the whole image at
    # scale 1 was erased, and 2% of the default boxes on 8x8 images spanned a side
    assert torch.equal(build_augment("erasing:scale=(1,1),ratio=(1,1),p=1", (1, 32, 32))(x[:8]), x[:8])
    small = build_augment("erasing:p=1", (1, 8, 8))(torch.ones(4000, 1, 8, 8))[:, 0] == 0
    assert not (small.any(2).sum(1) == 8).any() and not (small.any(1).sum(1) == 8).any() and small.any((1, 2)).float().mean() > 0.9


def test_blur_smooths_noise_and_keeps_mean():
    x = _batch(8)
    y = build_augment("blur:kernel=5,sigma=(1.5,1.5),p=1", (3, 32, 32))(x)
    assert y.std() < 0.6 * x.std()
    assert abs(y.mean() - x.mean()) < 0.01


def test_salt_pepper_fraction_matches_amount():
    x = torch.full((32, 3, 32, 32), 0.5)
    y = build_augment("salt-pepper:amount=0.1,salt_vs_pepper=0.5,p=1", (3, 32, 32))(x)
    changed = (y != 0.5).all(dim=1)  # a hit pixel is rewritten in every channel
    frac = changed.float().mean().item()
    assert 0.085 < frac < 0.115
    vals = y.permute(1, 0, 2, 3)[:, changed]
    assert set(vals.unique().tolist()) <= {0.0, 1.0}
    salt = (vals[0] == 1).float().mean().item()
    assert 0.4 < salt < 0.6
    assert torch.equal(build_augment("salt-pepper:amount=0.1,p=0", (3, 32, 32))(x), x)
    y = build_augment("salt-pepper:amount=0.1,salt_vs_pepper=0.9,p=1", (3, 32, 32))(x)
    changed = (y != 0.5).all(dim=1)
    salt = (y.permute(1, 0, 2, 3)[0, changed] == 1).float().mean().item()
    assert 0.85 < salt < 0.95  # salt_vs_pepper is the share of white (salt) among the hit pixels


def test_eval_mode_keeps_only_deterministic_items():
    aug = build_augment("crop flip resize:size=16 center-crop:size=12 salt-pepper", (3, 32, 32), train=False)
    assert [i.name for i in aug.items] == ["resize", "center-crop"]
    x = _batch(4)
    assert torch.equal(aug(x), aug(x)) and aug(x).shape == (4, 3, 12, 12)


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate"])
def test_crop_padding_modes_match_torch_pad_on_both_layouts(mode):
    x = (_batch(6, 3, 10, 12) * 255).round().to(torch.uint8)
    aug = build_augment(f"crop:padding=3,padding_mode={mode} flip", (3, 10, 12))
    torch.manual_seed(7)
    y_nchw = aug(x)
    torch.manual_seed(7)
    y_nhwc = aug(x.contiguous(memory_format=torch.channels_last))  # the loader's layout
    assert y_nchw.dtype == torch.uint8 and torch.equal(y_nchw, y_nhwc)
    assert y_nhwc.is_contiguous(memory_format=torch.channels_last)
    padded = torch.nn.functional.pad(x.float(), (3, 3, 3, 3), mode=mode).to(torch.uint8)
    for i in range(len(x)):
        windows = [padded[i, :, dy : dy + 10, dx : dx + 12] for dy in range(7) for dx in range(7)]
        assert any(torch.equal(y_nchw[i], win) or torch.equal(y_nchw[i], win.flip(-1)) for win in windows), i


def test_crop_p_below_one_keeps_centre_window():
    x = _batch(64, 1, 8, 8)
    y = build_augment("crop:padding=2,p=0.5", (1, 8, 8))(x)
    same = sum(bool(torch.equal(y[i], x[i])) for i in range(64))
    assert 16 < same < 56  # about half untouched (centre window == identity at full size)


def test_mapping_parameters_read_like_the_string_form_whatever_yaml_made_of_them():
    # YAML 1.1 reads 1e-2 (no dot) as a string: {salt-pepper: {amount: 1e-2}} was "not a number"
    # while 'salt-pepper:amount=1e-2' worked
    import yaml

    spec = yaml.safe_load("[{salt-pepper: {amount: 1e-2}}, {blur: {sigma: [5e-1, 1]}}, {erasing: {scale: '(0.1, 0.2)'}}, "
                          "{crop: {padding_mode: reflect}}]")  # fmt: skip
    assert spec[0]["salt-pepper"]["amount"] == "1e-2"  # the quirk itself
    items = parse_augment(spec)
    assert [str(i) for i in items] == ["salt-pepper:amount=0.01", "blur:sigma=(0.5,1.0)", "erasing:scale=(0.1,0.2)",
                                       "crop:padding_mode=reflect"]  # fmt: skip
    assert items == parse_augment("salt-pepper:amount=1e-2 blur:sigma=(5e-1,1) erasing:scale=(0.1,0.2) crop:padding_mode=reflect")
    with pytest.raises(DataError, match="amount='lots' is not a number"):
        parse_augment([{"salt-pepper": {"amount": "lots"}}])


@pytest.mark.parametrize("spec", [{"flip": {"p": float("nan")}}, {"blur": {"sigma": [0.5, float("inf")]}},
                                  {"erasing": {"scale": [float("nan"), 0.3]}}, {"rotation": {"degrees": float("nan")}},
                                  {"color-jitter": {"brightness": float("inf")}}])  # fmt: skip
def test_nan_and_inf_parameters_are_refused_by_name(spec):
    # nan passed every range check (flip:p=nan never flipped; erasing failed mid-run with torch's
    # "from is out of bounds"), and inf an open one
    (name, params), = spec.items()
    (key, value), = params.items()
    with pytest.raises(DataError, match=rf"augmentation {name!r}: {key}=.*(nan|inf).* is not a finite number"):
        parse_augment([spec])
