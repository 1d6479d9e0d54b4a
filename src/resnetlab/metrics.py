"""Classification metrics, computed by scikit-learn (and torch for the loss).

Nothing here re-implements a formula: accuracy, top-k accuracy, precision / recall / F1 and
the confusion matrix come from :mod:`sklearn.metrics`, the cross-entropy from
:func:`torch.nn.functional.nll_loss` on log-probabilities. This module only shapes the
results into one JSON-friendly dict used by ``evaluate``, the report and the CLI.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

log = logging.getLogger(__name__)

__all__ = ["classification_metrics", "METRIC_KEYS", "INPUT_KINDS"]

# Scalar / structured keys of the dict returned by classification_metrics, in display order.
METRIC_KEYS = (
    "accuracy",
    "top5_accuracy",
    "loss",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_micro",
    "recall_micro",
    "f1_micro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "confusion_matrix",
    "per_class",
)
INPUT_KINDS = ("auto", "logits", "probs")


def _as_tensor(x, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def class_indices(values: torch.Tensor | np.ndarray | Sequence[float], name: str = "targets") -> torch.Tensor:
    """``values`` as a flat int64 tensor of class indices; ValueError for a fractional or
    non-finite value (an int64 cast truncates 1.7 to class 1 without a word)."""
    raw = _as_tensor(values, torch.float64).reshape(-1)
    wrong = ~torch.isfinite(raw) | (raw != raw.round())
    if bool(wrong.any()):
        raise ValueError(f"{name} must be class indices (whole numbers), got {raw[wrong][0].item():g}")
    return raw.to(torch.int64)


def _looks_like_probs(scores: torch.Tensor) -> bool:
    # Rows of non-negative numbers that sum to 1 are treated as probabilities; logits
    # practically never satisfy both (a softmax output always does).
    if scores.numel() == 0 or bool((scores < 0).any()) or bool((scores > 1).any()):
        return False
    return bool(torch.allclose(scores.sum(1), torch.ones(scores.shape[0], dtype=scores.dtype), atol=1e-4))


def classification_metrics(
    logits_or_probs: torch.Tensor | np.ndarray,
    targets: torch.Tensor | np.ndarray | Sequence[int],
    classes: Sequence[str],
    kind: str = "auto",
    top_k: int = 5,
) -> dict:
    """Accuracy, top-5, loss, precision / recall / F1 and the confusion matrix of a classifier.

    Args:
        logits_or_probs: scores of shape (N, K), a tensor or array; logits or probabilities.
        targets: true class indices of shape (N,), in ``[0, K)``.
        classes: the K class names, in index order.
        kind: ``"logits"``, ``"probs"`` or ``"auto"`` (probabilities when every row is
            non-negative and sums to 1).
        top_k: k of the top-k accuracy, reported as ``top5_accuracy`` when k == 5; it is
            ``None`` unless there are more than k classes (top-k would trivially be 1).

    Returns:
        A dict with ``accuracy``, ``top5_accuracy`` (or None), ``loss`` (mean cross-entropy),
        ``precision_macro``, ``recall_macro``, ``f1_macro``, ``precision_micro``,
        ``recall_micro``, ``f1_micro``, ``precision_weighted``, ``recall_weighted``, ``f1_weighted``
        (weighted by support, as report 000's precision and recall are), ``confusion_matrix`` (K lists of K
        counts, rows = true class), ``confusion_matrix_normalized`` (rows sum to 1), ``per_class`` (one ``{class, precision, recall, f1,
        support}`` per class) and ``num_samples``. Undefined ratios (a class never
        predicted, or absent) count as 0 (``zero_division=0``) in ``per_class``; the macro
        averages leave out a class that is neither a label nor a prediction (as sklearn and
        torchmetrics do), so a split without some class is not penalised for it.

    Example:
        >>> m = classification_metrics([[2.0, 0.1], [0.3, 1.0]], [0, 0], ["cat", "dog"])
        >>> m["accuracy"], m["confusion_matrix"]
        (0.5, [[1, 1], [0, 0]])
    """
    if kind not in INPUT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(INPUT_KINDS)}, got {kind!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    scores = _as_tensor(logits_or_probs, torch.float64)
    y = class_indices(targets)
    classes = [str(c) for c in classes]
    k = len(classes)
    if scores.dim() != 2:
        raise ValueError(f"logits_or_probs must have shape (N, K), got {tuple(scores.shape)}")
    if scores.shape[1] != k:
        raise ValueError(f"logits_or_probs has {scores.shape[1]} columns but there are {k} classes")
    if scores.shape[0] != y.shape[0]:
        raise ValueError(f"{scores.shape[0]} score rows but {y.shape[0]} targets")
    if scores.shape[0] == 0:
        raise ValueError("cannot compute metrics of 0 samples")
    finite = torch.isfinite(scores).all(1)
    if not bool(finite.all()):  # argmax takes nan for the largest score: every such row "predicted" class 0
        raise ValueError(f"logits_or_probs: {int((~finite).sum())} of {len(finite)} rows hold nan or inf; metrics of "
                         f"non-finite scores mean nothing (for a masked class use a large negative logit, e.g. -1e9)")  # fmt: skip
    if bool(((y < 0) | (y >= k)).any()):
        bad = int(y[(y < 0) | (y >= k)][0])
        raise ValueError(f"target {bad} is out of range for {k} classes (allowed: 0..{k - 1})")

    if kind == "auto":
        kind = "probs" if _looks_like_probs(scores) else "logits"
    if kind == "logits":
        log_probs = F.log_softmax(scores, dim=1)
    else:
        # Clamp so a confidently wrong probability of exactly 0 gives a large, finite loss.
        log_probs = scores.clamp_min(1e-12).log()
    loss = float(F.nll_loss(log_probs, y))

    y_true = y.numpy()
    y_pred = scores.argmax(1).numpy()
    labels = list(range(k))  # so absent classes still get a row / column

    out: dict = {"num_samples": int(y_true.shape[0])}
    out["accuracy"] = float(skm.accuracy_score(y_true, y_pred))
    if k > top_k:
        out[f"top{top_k}_accuracy"] = float(
            skm.top_k_accuracy_score(y_true, scores.numpy(), k=top_k, labels=labels)
        )
    else:
        out[f"top{top_k}_accuracy"] = None
    out["loss"] = loss if math.isfinite(loss) else float("nan")
    # Averages run over the classes that occur as a label or a prediction (sklearn's default,
    # torchmetrics' too): a class absent from both, as in a small or partial split, is not a 0.
    seen = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    for avg in ("macro", "micro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=seen, average=avg, zero_division=0
        )
        out[f"precision_{avg}"] = float(p)
        out[f"recall_{avg}"] = float(r)  # weighted recall equals accuracy (support-weighted)
        out[f"f1_{avg}"] = float(f)
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
    out["confusion_matrix"] = cm.astype(int).tolist()
    # Row-normalized (each true class sums to 1; sklearn turns an absent class's row into 0s).
    out["confusion_matrix_normalized"] = skm.confusion_matrix(
        y_true, y_pred, labels=labels, normalize="true"
    ).tolist()
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    out["per_class"] = [
        {"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, c in enumerate(classes)
    ]
    return out

