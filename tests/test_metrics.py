"""classification_metrics against small cases computed by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from resnetlab.metrics import classification_metrics

CLASSES3 = ["a", "b", "c"]
# y_true / y_pred of the hand-worked 3-class example (micro != macro):
#   confusion rows (true)  a: [3, 1, 0]   b: [0, 2, 0]   c: [1, 0, 1]
#   precision a 3/4, b 2/3, c 1/1 ; recall a 3/4, b 2/2, c 1/2
Y_TRUE = [0, 0, 0, 0, 1, 1, 2, 2]
Y_PRED = [0, 0, 0, 1, 1, 1, 2, 0]


def _probs_for(pred, p_top=0.6):
    """Probability rows with argmax ``pred`` and the other mass split evenly."""
    rows = np.full((len(pred), 3), (1 - p_top) / 2)
    rows[np.arange(len(pred)), pred] = p_top
    return rows


def test_three_class_hand_computed():
    m = classification_metrics(_probs_for(Y_PRED), Y_TRUE, CLASSES3)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 2, 0], [1, 0, 1]]
    np.testing.assert_allclose(m["confusion_matrix_normalized"], [[0.75, 0.25, 0], [0, 1, 0], [0.5, 0, 0.5]])
    p = [3 / 4, 2 / 3, 1.0]
    r = [3 / 4, 1.0, 1 / 2]
    f = [2 * pi * ri / (pi + ri) for pi, ri in zip(p, r)]
    assert m["precision_macro"] == pytest.approx(sum(p) / 3)
    assert m["recall_macro"] == pytest.approx(sum(r) / 3)
    assert m["f1_macro"] == pytest.approx(sum(f) / 3)
    # micro over single-label classes is accuracy; here it differs from macro on purpose
    for key in ("precision_micro", "recall_micro", "f1_micro"):
        assert m[key] == pytest.approx(0.75)
    assert m["precision_macro"] != pytest.approx(m["precision_micro"])
    assert m["f1_weighted"] == pytest.approx((4 * f[0] + 2 * f[1] + 2 * f[2]) / 8)
    # support-weighted precision and recall (report 000's): weighted recall is accuracy
    assert m["precision_weighted"] == pytest.approx((4 * p[0] + 2 * p[1] + 2 * p[2]) / 8)
    assert m["recall_weighted"] == pytest.approx(m["accuracy"])
    assert [row["support"] for row in m["per_class"]] == [4, 2, 2]
    assert [row["class"] for row in m["per_class"]] == CLASSES3
    assert [row["precision"] for row in m["per_class"]] == pytest.approx(p)
    assert [row["f1"] for row in m["per_class"]] == pytest.approx(f)
    assert m["top5_accuracy"] is None  # only 3 classes
    assert m["num_samples"] == 8


def test_loss_is_cross_entropy_from_probs_and_logits():
    probs = _probs_for(Y_PRED)
    expected = -sum(math.log(probs[i, t]) for i, t in enumerate(Y_TRUE)) / len(Y_TRUE)
    m_probs = classification_metrics(probs, Y_TRUE, CLASSES3)  # auto-detected as probabilities
    assert m_probs["loss"] == pytest.approx(expected)
    # log-probabilities shifted by a constant are logits with the same softmax
    logits = torch.tensor(np.log(probs) + 3.0, dtype=torch.float32)
    m_logits = classification_metrics(logits, torch.tensor(Y_TRUE), CLASSES3)
    assert m_logits["loss"] == pytest.approx(expected, rel=1e-5)
    # forcing the wrong interpretation changes the loss, so the kind really matters
    assert classification_metrics(probs, Y_TRUE, CLASSES3, kind="logits")["loss"] != pytest.approx(expected)


def test_top5_with_seven_classes():
    classes = [f"c{i}" for i in range(7)]
    scores = torch.tensor([[6.0, 5, 4, 3, 2, 1, 0]]).repeat(4, 1)  # rank of class j is j+1
    targets = [0, 4, 5, 6]  # ranks 1, 5, 6, 7 -> 2 of 4 in the top 5
    m = classification_metrics(scores, targets, classes)
    assert m["top5_accuracy"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(0.25)


def test_top5_absent_with_five_classes():
    m = classification_metrics(torch.eye(5), list(range(5)), list("abcde"))
    assert m["top5_accuracy"] is None
    assert m["accuracy"] == 1.0


def test_zero_division_gives_zero_without_warnings():
    # class "c" is neither present nor predicted; class "b" is predicted but never true
    probs = _probs_for([0, 1, 0, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(probs, [0, 0, 0, 0], CLASSES3)
    per = {row["class"]: row for row in m["per_class"]}
    assert per["c"] == {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert per["b"]["precision"] == 0.0 and per["b"]["support"] == 0
    assert per["a"]["precision"] == 1.0 and per["a"]["recall"] == pytest.approx(0.75)
    # macro averages over the classes seen as a label or a prediction (a, b): c, absent from
    # both, is left out as sklearn's default and torchmetrics do; b, predicted but never true, counts 0
    assert m["recall_macro"] == pytest.approx(0.75 / 2)
    from torchmetrics.functional.classification import multiclass_f1_score, multiclass_recall

    t = torch.tensor([0, 0, 0, 0])
    assert m["recall_macro"] == pytest.approx(float(multiclass_recall(torch.tensor(probs), t, 3, average="macro")))
    assert m["f1_macro"] == pytest.approx(float(multiclass_f1_score(torch.tensor(probs), t, 3, average="macro")))
    assert m["confusion_matrix_normalized"][2] == [0.0, 0.0, 0.0]


def test_agrees_with_torchmetrics_on_random_data():
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 10, generator=g)
    targets = torch.randint(0, 10, (300,), generator=g)
    m = classification_metrics(logits, targets, [str(i) for i in range(10)])
    assert m["f1_macro"] == pytest.approx(float(multiclass_f1_score(logits, targets, 10, average="macro")), abs=1e-6)
    assert m["top5_accuracy"] == pytest.approx(float(multiclass_accuracy(logits, targets, 10, average="micro", top_k=5)))
    assert m["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, targets)), rel=1e-6)


@pytest.mark.parametrize(
    "scores,targets,kw,match",
    [
        (np.zeros((2, 4)), [0, 1], {}, "4 columns but there are 3 classes"),
        (np.zeros((2, 3)), [0, 1, 2], {}, "2 score rows but 3 targets"),
        (np.zeros((2, 3)), [0, 3], {}, "target 3 is out of range"),
        (np.zeros((2, 3)), [0, 1], {"kind": "softmax"}, "kind must be one of"),
        (np.zeros((0, 3)), [], {}, "0 samples"),
        # nan scores made argmax "predict" class 0: all-nan logits scored accuracy 1.0 on targets 0
        (np.full((2, 3), np.nan), [0, 0], {}, "2 of 2 rows hold nan or inf"),
        (np.array([[0.0, np.inf, 0.0], [1.0, 0.0, 0.0]]), [1, 0], {}, "1 of 2 rows hold nan or inf"),
        # float targets were truncated: 1.7 counted as class 1
        (np.zeros((2, 3)), [0.0, 1.7], {}, r"targets must be class indices \(whole numbers\), got 1.7"),
        (np.zeros((2, 3)), [0, 1], {"top_k": 0}, "top_k must be an integer >= 1, got 0"),
    ],
)
def test_bad_input_one_line_errors(scores, targets, kw, match):
    assert classification_metrics(np.eye(3)[[0, 1]], [0.0, 1.0], CLASSES3)["accuracy"] == 1.0  # whole floats are fine
    # a numpy integer is an integer (it was refused as "top_k must be an integer >= 1, got np.int64(1)")
    assert classification_metrics(np.eye(3)[[0, 1]], [0, 1], CLASSES3, top_k=np.int64(1))["top1_accuracy"] == 1.0
    with pytest.raises(ValueError, match=match) as exc:
        classification_metrics(scores, targets, CLASSES3, **kw)
    assert "\n" not in str(exc.value)
