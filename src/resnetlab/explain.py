"""Explanations: where a model looks (Grad-CAM & co), galleries, activation maps of any layer.

The attribution methods come from libraries: Grad-CAM, Grad-CAM++ and Score-CAM from the
``grad-cam`` package (pytorch_grad_cam), saliency and integrated gradients from captum. This
module is the glue: picking the layer by stage name, batching, choosing which images to show
(confident hits, confident mistakes, most-confused pairs, top losses), drawing the galleries and
writing a report section.

Speed: predictions for the whole split come from one batched pass (the evaluation loader);
attribution maps are then computed, also in batches, only for the images that are shown, so a
10,000-image test split is explained in well under a minute on two CPU cores for Grad-CAM.

Activation maps (:func:`activation_maps`, ``resnetlab activations``) draw, for one image, the
feature maps of named layers: ``input`` (the normalized image's channels, each its own map), the
stages (``stem``, ``layer1`` ...), or any module name of ``model.named_modules()`` (``conv1``
before its norm, ``layer1.0.conv1``, ``layer1.0.act`` ...). A module that runs more than once per
forward pass (a block's ``act``: twice in a basic block, three times in a bottleneck) gives its first
call's output by its name, the k-th as ``NAME#k``. :func:`list_layers` (``resnetlab activations
RUN --list-layers``) lists the names in forward order with their output shapes. Grad-CAM's
``layer`` stays a stage name.

Files written by :func:`explain` (``<run>/explain/`` and ``<run>/report_sections/``)::

    explain/summary.json                 method, layer, accuracy, galleries, confused pairs, top losses
    explain/gallery_<k>_<class>.png      per class: correct row(s) and incorrect row(s) with overlays
    explain/confused_pairs.png           the most-confused (true, predicted) pairs with examples
    explain/top_losses.png               the highest-loss examples, CAM of the predicted and the true class
    report_sections/explain.html         a section for report.html (images embedded)
    report_sections/explain.md           a section for report.md (images linked, run-relative)
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import logging
import os
import re
import textwrap
import types
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.errors import ResnetlabError, check_int, check_output_folder, did_you_mean, printable, unknown_name

if TYPE_CHECKING:
    from resnetlab.checkpoint import Checkpoint
    from resnetlab.data import DatasetSplits

log = logging.getLogger(__name__)

__all__ = ["METHODS", "CAM_METHODS", "attribution_maps", "explain", "activation_maps", "stage_activations", "layer_shapes",
           "list_layers", "overlay"]

CAM_METHODS = ("gradcam", "gradcam++", "scorecam")
METHODS = CAM_METHODS + ("saliency", "integrated-gradients")
_ALIASES = {"grad-cam": "gradcam", "gradcampp": "gradcam++", "grad-cam++": "gradcam++", "score-cam": "scorecam",
            "ig": "integrated-gradients", "integrated_gradients": "integrated-gradients"}


def _method(name: str) -> str:
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in METHODS:
        raise ValueError(unknown_name("explanation method", name, METHODS))
    return key


def default_layer(model: nn.Module) -> str:
    """The last stage (``layer4`` on ImageNet ResNets, ``layer3`` on the CIFAR family)."""
    return list(model.stages())[-1]


def stage_sizes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Each stage's output height and width for inputs shaped like ``x`` (one forward pass of
    one image, in eval mode, without gradients; the model's mode is put back)."""
    sizes: dict[str, tuple[int, int]] = {}

    def record(name: str):
        def hook(_module, _inputs, out) -> None:  # returns None: the output is left as it is
            sizes.setdefault(name, tuple(out.shape[-2:]))

        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in model.stages().items()]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(x[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return sizes


def cam_layer(model: nn.Module, x: torch.Tensor, layer: str | None = None) -> str:
    """The stage a CAM method looks at for inputs shaped like ``x``.

    A stage whose maps are 1x1 gives every image one uniform heat map (the CAM weights one pixel):
    the default is then the last stage with more than one pixel (``layer3`` for a ResNet-18 at
    32x32), said in a log line; a layer named by the caller is kept, with a warning naming the
    stages that would show where the evidence is.
    """
    sizes = stage_sizes(model, x)
    flat = [n for n, (h, w) in sizes.items() if h * w <= 1]
    if layer is not None:
        if layer in flat:
            spatial = [n for n in sizes if n not in flat]
            log.warning("%s's maps are 1x1 at a %dx%d input: its heat map is uniform (one value per image); "
                        "choose a layer with more pixels%s", layer, x.shape[-2], x.shape[-1],
                        f" (--layer {spatial[-1]}: {sizes[spatial[-1]][0]}x{sizes[spatial[-1]][1]})" if spatial else "")  # fmt: skip
        return layer
    last = default_layer(model)
    if last not in flat:
        return last
    spatial = [n for n in sizes if n not in flat]
    if not spatial:
        log.warning("every stage's maps are 1x1 at a %dx%d input: the heat maps are uniform", x.shape[-2], x.shape[-1])
        return last
    pick = spatial[-1]
    log.info("%s's maps are 1x1 at a %dx%d input (a uniform heat map): the CAM looks at %s (%dx%d) instead",
             last, x.shape[-2], x.shape[-1], pick, *sizes[pick])  # fmt: skip
    return pick


@contextlib.contextmanager
def _quiet_scorecam():
    # pytorch_grad_cam's ScoreCAM draws a tqdm bar per image; swap its module-level reference for
    # a pass-through while we run (only that module's name is touched, not tqdm itself).
    from pytorch_grad_cam import score_cam

    saved = score_cam.tqdm
    score_cam.tqdm = types.SimpleNamespace(tqdm=lambda it, *a, **k: it)
    try:
        yield
    finally:
        score_cam.tqdm = saved


def _normalize_maps(maps: torch.Tensor) -> np.ndarray:
    """(B, H, W) non-negative -> each map scaled to [0, 1] (an all-zero map stays zero)."""
    flat = maps.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1)
    hi = flat.max(1).values.view(-1, 1, 1)
    return ((maps - lo) / (hi - lo).clamp_min(1e-12)).clamp_(0, 1).cpu().numpy().astype(np.float32)


def attribution_maps(
    model: nn.Module,
    x: torch.Tensor,
    targets: Sequence[int] | torch.Tensor,
    method: str = "gradcam",
    layer: str | None = None,
    batch_size: int = 64,
    ig_steps: int = 32,
    baseline: torch.Tensor | None = None,
) -> np.ndarray:
    """Attribution heat maps for a batch, one per image, for the given target classes.

    Args:
        model: a resnetlab model, run in eval mode; its mode and its parameters' ``requires_grad``
            and ``.grad`` are as before afterwards (frozen or BN-folded models work as well).
        x: normalized input ``(N, C, H, W)`` on the model's device.
        targets: the class to explain for each image (usually the predicted one).
        method: ``gradcam``, ``gradcam++``, ``scorecam`` (grad-cam package), ``saliency`` or
            ``integrated-gradients`` (captum).
        layer: stage name for the CAM methods (``stem``, ``layer1`` ...; default the last stage
            whose maps are larger than 1x1 at this input size, :func:`cam_layer`); saliency and
            integrated gradients work on the input and ignore it.
        batch_size: images per forward/backward pass.
        ig_steps: integration steps of integrated gradients.
        baseline: integrated-gradients baseline, broadcastable to ``x`` (default: zeros, which in
            normalized units is the mean image).

    Returns:
        float32 ``(N, H, W)`` maps, each scaled to [0, 1].

    Raises:
        ValueError: unknown method or layer (lists the valid ones), targets of the wrong length or
            outside ``0 .. num_classes - 1``.

    Example:
        >>> from resnetlab import create_model
        >>> m = create_model("resnet8", num_classes=3)
        >>> attribution_maps(m, torch.randn(2, 3, 16, 16), [0, 2]).shape
        (2, 16, 16)
    """
    method = _method(method)
    if layer is not None:
        model.get_stage(layer)  # ValueError listing the stages for an unknown name
    if method in CAM_METHODS and len(x):
        layer = cam_layer(model, x, layer)
    return _attribution_maps(model, x, targets, method, layer, batch_size, ig_steps, baseline)


def _attribution_maps(model, x, targets, method, layer, batch_size=64, ig_steps=32, baseline=None) -> np.ndarray:
    """:func:`attribution_maps` once the method and the layer are settled."""
    from resnetlab.metrics import class_indices

    raw = torch.as_tensor(targets)
    if raw.dtype == torch.bool:  # True explained class 1
        raise ValueError(f"targets must be class indices (whole numbers), got {raw.flatten()[0].item()!r}")
    targets = class_indices(raw).tolist()  # 2.7 explained class 2
    if len(targets) != len(x):
        raise ValueError(f"targets has {len(targets)} entries for {len(x)} images")
    n_classes = getattr(model, "num_classes", None)
    bad = [t for t in targets if n_classes is not None and not 0 <= t < n_classes]
    if bad:  # grad-cam printed an IndexError and returned nothing; -1 explained the last class
        raise ValueError(f"targets: class {bad[0]} is not a class of this model (allowed: 0 .. {n_classes - 1})")
    if method in CAM_METHODS:
        stage = model.get_stage(layer or default_layer(model))
    was_training = model.training
    # Gradients flow from the input, not the weights: a model with frozen parameters (an
    # optimize_for_inference copy, a transfer run's frozen stages) is explained as well, and the
    # parameters' requires_grad and .grad (the CAM library zeroes and fills them) are put back.
    params = list(model.parameters())
    saved = [(p.requires_grad, p.grad) for p in params]
    model.eval()
    model.requires_grad_(False)
    out: list[np.ndarray] = []
    try:
        with torch.enable_grad():  # also when called under torch.no_grad()
            for i in range(0, len(x), batch_size):
                xb, tb = x[i:i + batch_size], targets[i:i + batch_size]
                if method in CAM_METHODS:
                    out.append(_cam_batch(model, stage, xb, tb, method))
                else:
                    out.append(_captum_batch(model, xb, tb, method, ig_steps, baseline))
    finally:
        for p, (requires_grad, grad) in zip(params, saved):
            p.requires_grad_(requires_grad)
            p.grad = grad
        model.train(was_training)
    if not out:
        return np.zeros((0, *x.shape[-2:]), dtype=np.float32)
    return np.concatenate(out)


def _cam_batch(model: nn.Module, stage: nn.Module, xb: torch.Tensor, tb: list[int], method: str) -> np.ndarray:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "scorecam": ScoreCAM}[method]
    quiet = _quiet_scorecam() if method == "scorecam" else contextlib.nullcontext()
    # contiguous NCHW: the library upsamples and multiplies activations with the input; the input
    # needs a gradient so that the stage's output has one when the parameters are frozen.
    xb = xb.detach().contiguous().requires_grad_(True)
    with quiet, cls(model=model, target_layers=[stage]) as cam:
        if method == "scorecam":
            cam.batch_size = 128  # masked copies per forward pass (the library's default is 16)
        maps = cam(input_tensor=xb, targets=[ClassifierOutputTarget(t) for t in tb])
    return np.clip(np.asarray(maps, dtype=np.float32), 0.0, 1.0)


def _captum_batch(model, xb, tb, method, ig_steps, baseline) -> np.ndarray:
    from captum.attr import IntegratedGradients, Saliency

    xb = xb.detach().clone().contiguous().requires_grad_(True)
    target = torch.as_tensor(tb, device=xb.device)
    if method == "saliency":
        attr = Saliency(model).attribute(xb, target=target, abs=True)
        maps = attr.amax(1)  # strongest channel gradient per pixel (Simonyan et al., 2014)
    else:
        base = torch.zeros_like(xb) if baseline is None else torch.as_tensor(baseline, device=xb.device).expand_as(xb)
        attr = IntegratedGradients(model).attribute(
            xb, baselines=base, target=target, n_steps=ig_steps, internal_batch_size=max(len(xb), 1) * 8
        )
        maps = attr.sum(1).abs()  # signed contributions summed over channels; magnitude shown
    return _normalize_maps(maps.detach().float())


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------


def _to_rgb(img: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 (C, H, W), or float in [0, 1] (after an evaluation resize) -> float32 (H, W, 3) in [0, 1]."""
    t = torch.as_tensor(img)
    a = (t.float() if t.is_floating_point() else t.float().div(255.0)).clamp(0, 1)
    if a.shape[0] == 1:
        a = a.expand(3, -1, -1)
    return a[:3].permute(1, 2, 0).numpy().astype(np.float32)


def overlay(image: torch.Tensor | np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Heat map over the image (pytorch_grad_cam's ``show_cam_on_image``): float (H, W, 3) in [0, 1].

    Example:
        >>> overlay(torch.zeros(1, 4, 4, dtype=torch.uint8), np.ones((4, 4), np.float32)).shape
        (4, 4, 3)
    """
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = _to_rgb(image)
    return show_cam_on_image(rgb, np.clip(heatmap, 0, 1), use_rgb=True, image_weight=1.0 - alpha).astype(np.float32) / 255.0


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _draw_grid(cells: list[list[dict[str, Any] | None]], path: Path, title: str, cell_in: float = 1.6) -> Path:
    """A grid of cells; each cell ``{"image": (H, W, 3) float, "title": str, "color": str}``."""
    plt = _plt()
    rows = max(1, len(cells))
    cols = max(1, max((len(r) for r in cells), default=1))
    # the title wrapped to the figure's width (~13 characters per inch at 10 pt): a grid of one
    # or two columns cut a one-line title off at both edges
    title = textwrap.fill(title, width=max(16, int(cols * cell_in * 13)))
    # a cell's title of several lines (a mistake: true over predicted) takes room from the image
    # above it unless its row grows: the overlay row's title ran into the image row's pictures
    lines = max((c["title"].count("\n") + 1 for r in cells for c in r if c), default=1)
    row_in = cell_in + 0.2 * (lines - 1)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell_in, rows * row_in + 0.2 + 0.2 * (title.count("\n") + 1)), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            cell = cells[r][c] if r < len(cells) and c < len(cells[r]) else None
            if cell is None:
                continue
            ax.imshow(cell["image"], interpolation="nearest")
            ax.set_title(cell["title"], fontsize=7, color=cell.get("color", "black"))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _slug(text: str) -> str:
    """A file-name part: letters and digits of any script kept (``猫`` and ``狗`` were both
    ``class``, so the second image's default figure name clashed with the first's), the rest
    one ``-``, cut to 100 bytes."""
    slug = re.sub(r"[\W_]+", "-", str(text)).strip("-").lower()
    # at most 100 bytes: a name of 80 CJK characters (240 bytes) made a figure name over the
    # file system's 255-byte limit
    slug = slug.encode("utf-8")[:100].decode("utf-8", "ignore").strip("-")
    return slug or "class"


# ---------------------------------------------------------------------------------------------
# explain()
# ---------------------------------------------------------------------------------------------


def _select(pred: torch.Tensor, target: torch.Tensor, conf: torch.Tensor, loss: torch.Tensor, k: int,
            n_per_class: int, n_pairs: int, n_top_loss: int) -> dict[str, Any]:
    """Which dataset positions to show. Confident hits and confident mistakes per class, the most
    confused (true, pred) pairs with their most confident examples, and the top losses."""
    galleries = []
    for c in range(k):
        hit = torch.nonzero((target == c) & (pred == c)).flatten()
        miss = torch.nonzero((target == c) & (pred != c)).flatten()
        hit = hit[torch.argsort(conf[hit], descending=True)][:n_per_class]
        miss = miss[torch.argsort(conf[miss], descending=True)][:n_per_class]
        galleries.append({"class": c, "correct": hit.tolist(), "incorrect": miss.tolist(),
                          "n_correct": int(((target == c) & (pred == c)).sum()),
                          "n_incorrect": int(((target == c) & (pred != c)).sum())})
    cm = torch.zeros(k, k, dtype=torch.int64)
    cm.index_put_((target, pred), torch.ones_like(target), accumulate=True)
    off = cm.clone()
    off.fill_diagonal_(0)
    pairs = []
    order = torch.argsort(off.flatten(), descending=True)
    for flat in order[:n_pairs].tolist():
        t, p = divmod(flat, k)
        count = int(off[t, p])
        if count == 0:
            break
        members = torch.nonzero((target == t) & (pred == p)).flatten()
        members = members[torch.argsort(conf[members], descending=True)][:n_per_class]
        pairs.append({"true": t, "pred": p, "count": count, "share_of_true": count / max(1, int(cm[t].sum())),
                      "examples": members.tolist()})
    top = torch.argsort(loss, descending=True)[:n_top_loss].tolist()
    return {"galleries": galleries, "pairs": pairs, "top_loss": top, "confusion": cm}


def explain(
    checkpoint_or_run: str | os.PathLike | Checkpoint,
    split: str = "test",
    method: str = "gradcam",
    layer: str | None = None,
    n_per_class: int = 4,
    out_dir: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    *,
    n_pairs: int = 5,
    n_top_loss: int = 12,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    which: str = "best",
    splits: DatasetSplits | None = None,
) -> dict[str, Any]:
    """Explain a checkpoint's predictions on a split: galleries, confused pairs, top losses.

    Args:
        checkpoint_or_run: a run folder, a checkpoint folder, or a loaded ``Checkpoint``.
        split: ``test``, ``val`` or ``train``.
        method: one of :data:`METHODS`.
        layer: the stage the CAM methods look at (default: the last stage of the model whose maps are larger than 1x1 at the split's image size, :func:`cam_layer`).
        n_per_class: images per gallery row (correct / incorrect), and per confused pair.
        out_dir: default ``<run>/explain`` (``<run>/explain-last`` for the last checkpoint). The
            best checkpoint's report section goes to ``<run>/report_sections`` (read by the run's
            report) when ``out_dir`` is inside the run folder; otherwise into ``out_dir`` itself.
            The report of a run that has no best checkpoint yet shows last, and reads the
            section in ``<run>/explain-last``.
        data_root: dataset root, replacing the recorded one.
        n_pairs: how many most-confused class pairs to show.
        n_top_loss: how many highest-loss examples to show.
        batch_size: images per forward (and attribution) pass.
        device: ``auto``, ``cpu``, ``cuda``, ...
        which: ``best`` or ``last`` checkpoint of a run folder.
        splits: an already loaded ``DatasetSplits`` (skips rebuilding the dataset).

    Returns:
        The summary (also written to ``summary.json``): accuracy, galleries with dataset indices
        (and each image's ``path`` for image folders, whose file names title the gallery cells),
        true/pred labels and confidences, confused pairs, top losses, and the written ``files``.

    Raises:
        ValueError: unknown method, layer or split; ``n_per_class`` < 1.

    Example:
        >>> s = explain("runs/demo", method="gradcam++", n_per_class=3)  # doctest: +SKIP
        >>> s["files"]["html"]                                           # doctest: +SKIP
        'runs/demo/report_sections/explain.html'
    """
    from resnetlab.checkpoint import Checkpoint, checkpoint_identity, load_checkpoint
    from resnetlab.data.images import preprocess
    from resnetlab.evaluate import SPLITS, checkpoint_suffix, collect_outputs, open_split, resolve_device, run_dir_of

    method = _method(method)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    for name, v, low in (("n_per_class", n_per_class, 1), ("n_pairs", n_pairs, 0), ("n_top_loss", n_top_loss, 0), ("batch_size", batch_size, 1)):
        check_int(name, v, low)
    if out_dir is not None:  # before any work: a folder of other files is refused
        check_output_folder(out_dir, _explain_file, "explain")
    device = resolve_device(device)
    ckpt = checkpoint_or_run if isinstance(checkpoint_or_run, Checkpoint) else load_checkpoint(checkpoint_or_run, which=which)
    model = ckpt.model.to(device)
    if layer is not None:
        model.get_stage(layer)  # fail on an unknown layer before any work
        if method not in CAM_METHODS:
            log.info("%s works on the input pixels; layer %s is not used", method, layer)
    src = open_split(ckpt, split, data_root=data_root, splits=splits, purpose="explain")
    imageset, data_name, mean, std = src.imageset, src.data_name, src.mean, src.std
    classes = list(ckpt.classes)

    # 1. predictions for the whole split, one batched pass
    logits, targets, positions = collect_outputs(model, src.loader(batch_size, device), device, tta_flip=src.tta_flip)
    # dataset order, whatever the loader did; a streamed file that does not decode is dropped from
    # its batch, so row i is dataset position positions[i], not i (the images and labels shown after
    # such a file were those of its neighbour)
    order = torch.argsort(positions)
    logits, targets, positions = logits[order], targets[order], positions[order]
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    loss = F.cross_entropy(logits, targets, reduction="none")
    acc = int((pred == targets).sum()) / max(len(targets), 1)  # exact, as evaluate's (float32 gave 0.2027777731)
    sel = _select(pred, targets, conf, loss, len(classes), n_per_class, n_pairs, n_top_loss)

    # 2. attribution maps only for what is shown, batched; the true-class map too for mistakes
    wanted = sorted({i for g in sel["galleries"] for i in g["correct"] + g["incorrect"]}
                    | {i for p in sel["pairs"] for i in p["examples"]} | set(sel["top_loss"]))
    wrong = [i for i in wanted if int(pred[i]) != int(targets[i])]
    # the images the predictions were made on: after the run's evaluation resize / center-crop
    raw = src.images(positions[wanted]) if wanted else None
    maps_pred: dict[int, np.ndarray] = {}
    maps_true: dict[int, np.ndarray] = {}

    def maps(x: torch.Tensor, cls: torch.Tensor) -> np.ndarray:
        m = _attribution_maps(model, x, cls, method, layer, batch_size=min(batch_size, 64))
        if not src.tta_flip:
            return m
        # the prediction averaged the image and its mirror: so does its map (the mirror's map
        # flipped back), as test-time augmentation of a CAM does; then scaled min to max again
        mf = _attribution_maps(model, torch.flip(x, dims=(3,)), cls, method, layer, batch_size=min(batch_size, 64))
        return _normalize_maps(torch.from_numpy((m + mf[:, :, ::-1]) / 2))

    if wanted:
        x = preprocess(raw, mean, std, device=device, channels_last=False)
        if method in CAM_METHODS:  # once, for the images' size: the last stage may be 1x1 there
            layer = cam_layer(model, x, layer)
        maps_pred = dict(zip(wanted, maps(x, pred[wanted])))
        if wrong:
            pos = {i: j for j, i in enumerate(wanted)}
            xw = x[[pos[i] for i in wrong]]
            maps_true = dict(zip(wrong, maps(xw, targets[wrong])))
    images = {i: raw[j] for j, i in enumerate(wanted)} if wanted else {}
    layer = layer or default_layer(model)  # nothing to show: the stage it would have looked at

    # 3. files
    run = run_dir_of(ckpt.path)
    base = run if run is not None else ckpt.path
    # The run's report shows the best checkpoint: another one (--which last) explains beside it.
    is_best = checkpoint_suffix(ckpt.path) == ""
    out = Path(out_dir) if out_dir is not None else base / f"explain{checkpoint_suffix(ckpt.path)}"
    # Inside the run folder the best checkpoint's section goes where the run's report reads it;
    # anything else keeps its section in its own folder (nothing written beside an --out elsewhere).
    inside = is_best and out.resolve().is_relative_to(base.resolve())
    sections = base / "report_sections" if inside else out
    try:
        out.mkdir(parents=True, exist_ok=True)
        sections.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResnetlabError(f"cannot write explanations to {out}: {exc.strerror or exc}") from exc
    # an earlier explain's figures that this one does not draw again (--pairs 0, no mistakes, fewer
    # classes) would sit beside its summary as if they were its own
    for old in out.glob("*.png"):
        if _explain_file(old.name):
            old.unlink(missing_ok=True)

    from resnetlab.report import mistake_title, shorten

    paths = imageset.paths  # image folders: which file a mistake is (the split's index alone does not say)

    def item(i: int) -> dict[str, Any]:
        return {"index": int(positions[i]), "true": int(targets[i]), "pred": int(pred[i]), "true_name": classes[int(targets[i])],
                "pred_name": classes[int(pred[i])], "confidence": round(float(conf[i]), 4), "loss": round(float(loss[i]), 4),
                **({"path": printable(paths[int(positions[i])])} if paths is not None else {})}

    def name(i: int) -> str:
        return shorten(printable(os.path.basename(paths[int(positions[i])]))) if paths is not None else f"#{int(positions[i])}"

    def cell(i: int, which_map: str = "pred") -> dict[str, Any]:
        hm = maps_pred[i] if which_map == "pred" else maps_true[i]
        ok = int(pred[i]) == int(targets[i])
        # a mistake on two lines, true over predicted, each cut on its own: one cut of "true→pred"
        # at 18 characters lost the predicted class; the map of the true class says so instead of
        # repeating the confidence of the cell beside it
        if ok:
            title = f"{shorten(classes[int(pred[i])])} {float(conf[i]):.2f}"
        else:
            title = mistake_title(classes[int(targets[i])], classes[int(pred[i])], 16) + (
                f" {float(conf[i]):.2f}" if which_map == "pred" else "\n(map of the true class)")
        return {"image": overlay(images[i], hm), "title": title, "color": "green" if ok else "red"}

    files: dict[str, Any] = {"galleries": []}
    for g in sel["galleries"]:
        c = g["class"]
        rows = [[{"image": _to_rgb(images[i]), "title": name(i), "color": "gray"} for i in g["correct"]],
                [cell(i) for i in g["correct"]],
                [{"image": _to_rgb(images[i]), "title": name(i), "color": "gray"} for i in g["incorrect"]],
                [cell(i) for i in g["incorrect"]]]
        # a class without correct (or without incorrect) images: no blank half figure
        rows = [r for r in rows if r] or [[None]]
        parts = [f"{what} ({g[f'n_{what}']})" for what in ("correct", "incorrect") if g[what]]
        where = " top, ".join(parts) + (" bottom" if len(parts) == 2 else "") if parts else "no images"
        p = _draw_grid(rows, out / f"gallery_{c:03d}_{_slug(classes[c])}.png",
                       f"{classes[c]}: {where}; {method} @ {layer if method in CAM_METHODS else 'input'}")
        files["galleries"].append(str(p))
        g["class_name"] = classes[c]
        g["correct"] = [item(i) for i in g["correct"]]
        g["incorrect"] = [item(i) for i in g["incorrect"]]
    if sel["pairs"]:
        rows = [[cell(i) for i in p["examples"]] + [cell(i, "true") for i in p["examples"]] for p in sel["pairs"]]
        files["confused_pairs"] = str(_draw_grid(rows, out / "confused_pairs.png",
                                                 "most confused pairs (true→pred): CAM of the prediction, then of the true class"))
    for p in sel["pairs"]:
        p["true_name"], p["pred_name"] = classes[p["true"]], classes[p["pred"]]
        p["examples"] = [item(i) for i in p["examples"]]
    if sel["top_loss"]:
        cols = 6
        flat = []
        for i in sel["top_loss"]:
            flat.append(cell(i))
            if i in maps_true:
                flat.append(cell(i, "true"))
        rows = [flat[r:r + cols] for r in range(0, len(flat), cols)]
        files["top_losses"] = str(_draw_grid(rows, out / "top_losses.png", "highest-loss examples (true→pred confidence)"))

    summary = {
        "checkpoint": str(ckpt.path), **checkpoint_identity(ckpt.meta), "split": split, "dataset": data_name, "method": method,
        "layer": layer if method in CAM_METHODS else None, "num_images": int(len(targets)), "accuracy": acc,
        "classes": classes, "galleries": sel["galleries"], "confused_pairs": sel["pairs"],
        "top_losses": [item(i) for i in sel["top_loss"]], "num_explained": len(wanted),
        "tta_flip": bool(src.tta_flip),  # predictions and maps averaged over the image and its mirror
    }
    files["summary"] = str(out / "summary.json")
    files["html"] = str(sections / "explain.html")
    files["md"] = str(sections / "explain.md")
    summary["files"] = files
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _write_sections(summary, out, sections, base if inside else out, standalone=not inside)
    log.info("explained %d of %d %s images (%s) -> %s", len(wanted), len(targets), split, method, out)
    return summary


def _rel(path: str | Path, base: Path) -> str:
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _explain_file(name: str) -> bool:
    """Whether ``name`` is one of the files explain writes into its folder."""
    return name in ("summary.json", "confused_pairs.png", "top_losses.png", "explain.md", "explain.html") or (
        name.startswith("gallery_") and name.endswith(".png"))


def _write_sections(summary: dict[str, Any], out: Path, sections: Path, base: Path, standalone: bool = False) -> None:
    """HTML (images embedded, for the self-contained report.html) and Markdown (run-relative links).
    ``standalone``: a page of its own, not a section of the run's report (``--which last``, an
    ``--out`` outside the run), which says whose explanations these are."""
    files = summary["files"]
    method = summary["method"] + (f" @ {summary['layer']}" if summary["layer"] else "")
    head = (f"Explanations of {summary['num_images']} {summary['split']} images with {method} "
            f"(accuracy {summary['accuracy']:.4f}); maps shown for the predicted class, and for the true class of mistakes"
            + ("; predictions and maps are averaged over the image and its mirror (the run's flip TTA)." if summary.get("tta_flip") else "."))
    pairs = summary["confused_pairs"]
    figures = ([("Most confused pairs", files["confused_pairs"])] if "confused_pairs" in files else []) + \
              ([("Highest losses", files["top_losses"])] if "top_losses" in files else []) + \
              [(f"Class {g['class_name']}", p) for g, p in zip(summary["galleries"], files["galleries"])]

    from resnetlab.report import md_escape

    # "# Title" is the section's title for the report (read_extra_sections), which adds the heading
    md = ["# Explanations", "", head, ""]
    if pairs:
        md += ["| true | predicted | count | share of true class |", "|---|---|---:|---:|"]
        md += [f"| {md_escape(p['true_name'])} | {md_escape(p['pred_name'])} | {p['count']} | {p['share_of_true']:.3f} |" for p in pairs]
        md.append("")
    for title, p in figures:
        md += [f"### {md_escape(title)}", "", f"![{md_escape(title)}]({_rel(p, base)})", ""]
    (sections / "explain.md").write_text("\n".join(md), encoding="utf-8", errors="backslashreplace")  # names not in UTF-8

    h = ['<section id="explanations">', f"<p>{html.escape(head)}</p>"]
    if pairs:
        h.append("<table><tr><th>true</th><th>predicted</th><th>count</th><th>share of true class</th></tr>")
        h += [f"<tr><td>{html.escape(p['true_name'])}</td><td>{html.escape(p['pred_name'])}</td>"
              f"<td>{p['count']}</td><td>{p['share_of_true']:.3f}</td></tr>" for p in pairs]
        h.append("</table>")
    for title, p in figures:
        data = base64.b64encode(Path(p).read_bytes()).decode()
        h.append(f"<h3>{html.escape(title)}</h3><img alt=\"{html.escape(title)}\" src=\"data:image/png;base64,{data}\">")
    h.append("</section>")
    if standalone:
        # a bare <section> fragment named neither the run nor the checkpoint (a last checkpoint's
        # page could pass for the best's) and declared no charset
        epoch = summary.get("checkpoint_epoch")
        which = f"{summary['checkpoint']}" + (f", epoch {epoch}" if epoch is not None else "")
        title = f"Explanations: {Path(summary['checkpoint']).parent.parent.name} ({Path(summary['checkpoint']).name} checkpoint)"
        h = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:100%}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", f"<p>Checkpoint: {html.escape(which)}; dataset {html.escape(str(summary['dataset']))}.</p>",
             *h, "</body></html>"]  # fmt: skip
    (sections / "explain.html").write_text("\n".join(h), encoding="utf-8", errors="backslashreplace")


# ---------------------------------------------------------------------------------------------
# activation maps
# ---------------------------------------------------------------------------------------------


INPUT_LAYER = "input"
# "layer1.0.act#2": the second call of a module that a forward pass runs more than once (a block's
# one activation module is applied after its first norm and again after the residual sum)
_CALL = re.compile(r"(?P<base>.+)#(?P<call>[1-9][0-9]*)")
_LIST_HINT = "list them with: resnetlab activations RUN --list-layers"
_CHANNEL_NAMES = {1: ("gray",), 3: ("R", "G", "B")}  # images are loaded as L or RGB


def _layer_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every name a layer can be given by: the stage names (``stem`` is the stem's last module),
    then every module name as ``model.named_modules()`` gives it."""
    return {**model.stages(), **{n: m for n, m in model.named_modules() if n}}


def _split_call(name: str) -> tuple[str, int]:
    m = _CALL.fullmatch(name)
    return (m["base"], int(m["call"])) if m else (name, 1)


def _unknown_layer(name: str, model: nn.Module, modules: dict[str, nn.Module]) -> str:
    from resnetlab.models.resnet import ACT_NAMES

    base, _ = _split_call(name)
    parent, _, leaf = base.rpartition(".")
    act = f"{parent}.act" if parent else "act"
    if leaf.lower() in ACT_NAMES and act in modules:  # torchvision calls it relu; here it is act
        hint = f"; did you mean {act!r} (the activation module)?"
    else:
        hint = did_you_mean(base, [INPUT_LAYER, *modules])
    return (f"unknown layer {name!r}{hint} (allowed: {INPUT_LAYER}, the stages {', '.join(model.stages())}, or a module "
            f"name such as conv1 or layer1.0.conv1, NAME#2 for a module's second call; {_LIST_HINT})")


def _resolve_layer(model: nn.Module, name: str) -> tuple[nn.Module | None, int]:
    """``(module, call number)`` of a layer name; ``(None, 1)`` for ``input``."""
    if name == INPUT_LAYER:
        return None, 1
    base, call = _split_call(str(name))
    modules = _layer_modules(model)
    if base not in modules:
        raise ValueError(_unknown_layer(str(name), model, modules))
    return modules[base], call


def stage_activations(model: nn.Module, x: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Outputs of named layers for input ``x``, captured with forward hooks.

    Args:
        model: a resnetlab model (run in eval mode, without gradients).
        x: normalized input ``(N, C, H, W)``.
        layers: names, in the order wanted (default: the stages ``stem``, ``layer1`` ...). A name
            is ``input`` (``x`` itself), a stage name, or any module name from
            ``model.named_modules()`` (``conv1``, ``bn1``, ``layer1.0``, ``layer1.0.conv1`` ...).
            A module that runs more than once per forward pass gives its first call's output;
            ``NAME#k`` gives the k-th (a block's ``act`` runs after its first norm and again
            after the residual sum, so ``layer1.0.act#2`` is the block's output).
            :func:`layer_shapes` lists the names with their shapes.

    Returns:
        ``{name: (N, ...) tensor}`` in the order of ``layers``.

    Raises:
        ValueError: an unknown name (with the closest names), or a call number beyond the
            module's calls.

    Example:
        >>> from resnetlab import create_model
        >>> acts = stage_activations(create_model("resnet8"), torch.randn(1, 3, 16, 16))
        >>> {k: tuple(v.shape) for k, v in acts.items()}
        {'stem': (1, 16, 16, 16), 'layer1': (1, 16, 16, 16), 'layer2': (1, 32, 8, 8), 'layer3': (1, 64, 4, 4)}
        >>> acts = stage_activations(create_model("resnet8"), torch.randn(1, 3, 16, 16), ["input", "conv1", "layer2.0.act#2"])
        >>> {k: tuple(v.shape) for k, v in acts.items()}
        {'input': (1, 3, 16, 16), 'conv1': (1, 16, 16, 16), 'layer2.0.act#2': (1, 32, 8, 8)}
    """
    names = list(dict.fromkeys(layers)) if layers else list(model.stages())
    wanted = {n: _resolve_layer(model, n) for n in names}
    # one hook per module, however many names (a stage and its module name, several calls) point at it
    by_module: dict[int, tuple[nn.Module, list[tuple[str, int]]]] = {}
    for n, (module, call) in wanted.items():
        if module is not None:
            by_module.setdefault(id(module), (module, []))[1].append((n, call))
    calls: dict[int, int] = {}
    captured: dict[str, torch.Tensor] = {}

    def hook(key: int, out: Any) -> None:
        calls[key] = calls.get(key, 0) + 1
        for n, call in by_module[key][1]:
            if call == calls[key] and isinstance(out, torch.Tensor):
                # cloned now: an in-place activation further on (bn1 -> act) would overwrite it
                captured[n] = out.detach().clone()

    _hooked_forward(model, x, [(m, lambda _m, _i, o, k=k: hook(k, o)) for k, (m, _) in by_module.items()])
    out: dict[str, torch.Tensor] = {}
    for n, (module, call) in wanted.items():
        if module is None:
            out[n] = x.detach().clone()
        elif n in captured:
            out[n] = captured[n]
        else:
            base, ran = _split_call(n)[0], calls.get(id(module), 0)
            if ran == 0:
                raise ValueError(f"layer {n!r} does not run in the model's forward pass; {_LIST_HINT}")
            if ran < call:
                allowed = ", ".join([base] + [f"{base}#{k}" for k in range(2, ran + 1)])
                raise ValueError(f"layer {n!r}: {base} runs {ran} time(s) per forward pass (allowed: {allowed})")
            raise ValueError(f"layer {n!r} gives no tensor; {_LIST_HINT}")
    return out


def layer_shapes(model: nn.Module, x: torch.Tensor) -> list[dict[str, Any]]:
    """The layer names :func:`activation_maps` draws, in the order a forward pass of ``x``
    produces them, with their output shapes: ``input``, then every module output that is a
    feature map ``(N, C, H, W)`` (the classifier's ``fc`` is not), ``NAME#k`` for a module's k-th call.

    Returns:
        ``[{"name", "module" (class name), "shape" (C, H, W), "stage" (the stage name this
        module's output also goes by, e.g. ``stem`` for ``maxpool``, else None)}, ...]``

    Example:
        >>> from resnetlab import create_model
        >>> rows = layer_shapes(create_model("resnet8"), torch.zeros(1, 3, 16, 16))
        >>> [(r["name"], r["shape"]) for r in rows[:3]], [r["name"] for r in rows if r["stage"]]
        ([('input', (3, 16, 16)), ('conv1', (16, 16, 16)), ('bn1', (16, 16, 16))], ['maxpool'])
        >>> [r["name"] for r in rows if r["name"].startswith("layer1")]
        ['layer1.0.conv1', 'layer1.0.bn1', 'layer1.0.act', 'layer1.0.conv2', 'layer1.0.bn2', 'layer1.0.act#2', 'layer1.0', 'layer1']
    """
    names = {id(m): n for n, m in model.named_modules() if n}
    stage_of = {id(m): s for s, m in model.stages().items() if names.get(id(m)) != s}
    rows: list[dict[str, Any]] = [{"name": INPUT_LAYER, "module": "input", "shape": tuple(x.shape[1:]), "stage": None}]
    calls: dict[int, int] = {}

    def hook(module: nn.Module, _inp: Any, out: Any) -> None:
        key = id(module)
        calls[key] = calls.get(key, 0) + 1
        if isinstance(out, torch.Tensor) and out.dim() == 4:
            first = calls[key] == 1
            rows.append({"name": names[key] + ("" if first else f"#{calls[key]}"), "module": type(module).__name__,
                         "shape": tuple(out.shape[1:]), "stage": stage_of.get(key) if first else None})

    # hooks fire as outputs are produced: a block's layers come before the block itself
    _hooked_forward(model, x, [(m, hook) for n, m in model.named_modules() if n])
    return rows


def _hooked_forward(model: nn.Module, x: torch.Tensor, hooks: Sequence[tuple[nn.Module, Any]]) -> None:
    """One eval-mode, no-grad forward pass of ``x`` with forward ``hooks`` ``(module, fn)``
    attached; the hooks are removed and the model's mode restored afterwards."""
    handles = [m.register_forward_hook(fn) for m, fn in hooks]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hd in handles:
            hd.remove()
        model.train(was_training)


def list_layers(checkpoint_or_run: str | os.PathLike | Checkpoint, device: str | torch.device = "cpu", which: str = "best") -> list[dict[str, Any]]:
    """:func:`layer_shapes` of a checkpoint's model for its input size (``meta["input_size"]``,
    the size after the run's evaluation resize / crop): the names ``--layers`` takes.

    Example:
        >>> [r["name"] for r in list_layers("runs/demo-digits")][:4]  # doctest: +SKIP
        ['input', 'conv1', 'bn1', 'act']
    """
    from resnetlab.checkpoint import Checkpoint, load_checkpoint
    from resnetlab.evaluate import resolve_device

    device = resolve_device(device)
    ckpt = checkpoint_or_run if isinstance(checkpoint_or_run, Checkpoint) else load_checkpoint(checkpoint_or_run, which=which)
    model = ckpt.model.to(device)
    x = torch.zeros(1, *(int(v) for v in ckpt.meta["input_size"]), device=device)
    return layer_shapes(model, x)


def activation_maps(
    checkpoint_or_run: str | os.PathLike | Checkpoint,
    image_path: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    layers: Sequence[str] | None = None,
    max_channels: int = 16,
    device: str | torch.device = "cpu",
    which: str = "best",
    overwrite: bool = True,
    *,
    index: int | None = None,
    split: str = "test",
    data_root: str | os.PathLike | None = None,
) -> Path:
    """Feature-map grids for named layers of a checkpoint, for one image: a file, or image
    ``index`` of a split of the run's own dataset (report 003 drew a CIFAR-10 test image).

    Each row is a layer (default the stages ``stem``, ``layer1`` ...): the input image, then the
    ``max_channels`` most active channels (highest mean activation), each scaled to its own range.
    The row ``input`` (report 003's "layer 0") shows the normalized input's channels in order
    (R, G, B), each as its own map.

    Args:
        checkpoint_or_run: a run folder, checkpoint folder, or loaded ``Checkpoint``.
        image_path: an image file; resized to the model's input and converted to its channel
            count (with a logged notice when the file has another one). Not with ``index``.
        out: the PNG to write; default ``<run>/explain/activations_<image stem>.png``
            (``explain-last/`` for ``which="last"``, as :func:`explain` names its folders).
        layers: layer names (default: all of ``model.stages()``): ``input``, stage names, or any module
            name of the model (``conv1`` is the first convolution before its norm,
            ``layer1.0.conv1``, ``layer1.0.act`` ...; ``NAME#2`` for a module's second call), as
            :func:`stage_activations` takes them; :func:`list_layers` lists them with their
            shapes (``resnetlab activations RUN --list-layers``).
        max_channels: channels shown per layer.
        device: where the model runs.
        which: ``best`` or ``last`` checkpoint of a run folder.
        overwrite: replace a PNG already at the output path; with ``False`` an existing file
            is refused before anything is computed (the CLI's default, so two images of the
            same name from different folders do not silently replace each other's figure).
        index: instead of a file, the image at this position of ``split`` of the checkpoint's
            dataset (the order of eval/<split>/predictions.csv), as evaluation sees it; its
            default output is ``activations_<split>-<index>.png``.
        split: ``test``, ``val`` or ``train``, for ``index``.
        data_root: dataset root replacing the recorded one, for ``index``.

    Returns:
        The written PNG's path.

    Raises:
        ValueError: an unknown layer (with the closest names), or one whose output is not a
            feature map (``fc``).
        DataError: the image cannot be read.
        ResnetlabError: the output exists and ``overwrite`` is ``False``; both or neither of
            ``image_path`` and ``index``; ``index`` outside the split.

    Example:
        >>> activation_maps("runs/demo", "shoe.png", layers=["layer1", "layer3"])  # doctest: +SKIP
        PosixPath('runs/demo/explain/activations_shoe.png')
    """
    from resnetlab.checkpoint import Checkpoint, load_checkpoint
    from resnetlab.data.images import preprocess, unused_png_path
    from resnetlab.evaluate import checkpoint_suffix, resolve_device, run_dir_of, tta_flip_of
    from resnetlab.predict import load_as_evaluated

    check_int("max_channels", max_channels, 1)
    if (image_path is None) == (index is None):
        raise ResnetlabError("activations draws one image: give an image file or a dataset index (--index N [--split test]), not "
                             + ("both" if index is not None else "neither"))  # fmt: skip
    if index is not None:
        from resnetlab.evaluate import SPLITS

        check_int("index", index, 0)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    device = resolve_device(device)
    ckpt = checkpoint_or_run if isinstance(checkpoint_or_run, Checkpoint) else load_checkpoint(checkpoint_or_run, which=which)
    model, meta = ckpt.model.to(device), ckpt.meta
    for n in layers or ():
        _resolve_layer(model, n)  # fail before reading the image
    shown = Path(image_path).name if index is None else f"{split}[{index}]"
    if out is None:
        run = run_dir_of(ckpt.path)
        # explain's folders: explain/ for the best checkpoint, explain-last/ for another
        folder = (run if run is not None else ckpt.path) / f"explain{checkpoint_suffix(ckpt.path)}"
        stem = Path(image_path).stem if index is None else f"{split}-{index}"
        out = folder / f"activations_{_slug(stem)}.png"
    out = unused_png_path(out, overwrite)  # matplotlib adds .png to a name without a suffix: that file is checked
    if index is None:
        # as evaluation and predict see a file: the run's data size, then its resize / center-crop
        raw = load_as_evaluated([image_path], meta)  # logs a notice when it converts channels
    else:
        from resnetlab.evaluate import open_split

        src = open_split(ckpt, split, data_root=data_root, purpose="draw activations of")
        if index >= len(src.imageset):
            raise ResnetlabError(f"--index {index} is outside the {split} split of {src.data_name} (0 .. {len(src.imageset) - 1})")
        raw = src.images(torch.tensor([index]))  # after the run's evaluation resize / center-crop
        shown += f", label {ckpt.classes[int(src.imageset.targets[index])]}"
    x = preprocess(raw, meta["mean"], meta["std"], device=device, channels_last=False)
    acts = stage_activations(model, x, layers)
    for name, a in acts.items():
        if a.dim() != 4:  # the head's layers (drop, fc) give (1, features)
            raise ValueError(f"layer {name!r} gives {tuple(a.shape)}, not feature maps (1, C, H, W); pick a layer "
                             f"before the classifier ({_LIST_HINT})")
    with torch.no_grad():
        logits = model(x)
        if tta_flip_of(meta):  # the prediction in the title is the one evaluate and predict give
            logits = (logits + model(torch.flip(x, dims=(3,)))) / 2
        probs = logits.softmax(1)[0]
    conf, pred = probs.max(0)

    plt = _plt()
    cols = 1 + min(max_channels, max(a.shape[1] for a in acts.values()))
    fig, axes = plt.subplots(len(acts), cols, figsize=(cols * 1.1, len(acts) * 1.2 + 0.6), squeeze=False)
    for r, (name, a) in enumerate(acts.items()):
        fmap = a[0].float().cpu()  # (C, H', W')
        if name == INPUT_LAYER:  # the normalized image's own channels, in order (report 003's "layer 0")
            top, channel_names = list(range(min(max_channels, len(fmap)))), _CHANNEL_NAMES.get(len(fmap))
        else:
            top, channel_names = torch.argsort(fmap.flatten(1).mean(1), descending=True)[:max_channels].tolist(), None
        for col in range(cols):
            axes[r][col].axis("off")
        axes[r][0].imshow(_to_rgb(raw[0]), interpolation="nearest")
        axes[r][0].set_title(f"{name}\n{tuple(fmap.shape)}", fontsize=6)
        for j, ch in enumerate(top):
            axes[r][j + 1].imshow(fmap[ch].numpy(), cmap="viridis", interpolation="nearest")
            axes[r][j + 1].set_title(f"ch {ch}" + (f" {channel_names[ch]}" if channel_names else ""), fontsize=5)
    classes = ckpt.classes
    fig.suptitle(f"{shown}: predicted {classes[int(pred)]} ({float(conf):.2f})", fontsize=8)
    fig.tight_layout()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
    except OSError as exc:
        raise ResnetlabError(f"cannot write {out}: {exc.strerror or exc}") from exc
    finally:
        plt.close(fig)
    log.info("activation maps of %s (predicted %s, %.4f; %d layers) -> %s", shown,
             classes[int(pred)], float(conf), len(acts), out)  # fmt: skip
    return out
