"""Two-class metrics (MHIST: HP = 0, SSA = 1; the binary MNIST variants): F1 per class, macro F1,
ROC AUC with class 1 as positive, and the confusion matrix."""
from __future__ import annotations

import torch


def binary(logits: torch.Tensor, y: torch.Tensor, names: tuple[str, str] = ("0", "1")) -> dict:
    pred = logits.argmax(dim=1)
    confusion = [[int(((y == t) & (pred == p)).sum()) for p in (0, 1)] for t in (0, 1)]  # rows: true class
    out = {"confusion": confusion}
    for c, name in enumerate(names):
        tp = confusion[c][c]
        fp = confusion[1 - c][c]
        fn = confusion[c][1 - c]
        out[f"f1_{name}"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    out["macro_f1"] = (out[f"f1_{names[0]}"] + out[f"f1_{names[1]}"]) / 2
    out["roc_auc"] = roc_auc(logits[:, 1] - logits[:, 0], y)
    return out


def roc_auc(score: torch.Tensor, y: torch.Tensor) -> float | None:
    """Probability that a random positive scores above a random negative (ties count half):
    the Mann-Whitney statistic, equal to the area under the ROC curve."""
    pos, neg = score[y == 1], score[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum().item()
    ties = (pos[:, None] == neg[None, :]).sum().item()
    return (greater + 0.5 * ties) / (len(pos) * len(neg))
