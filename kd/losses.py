"""Loss functions, each a plain function with its formula and source."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """Soft-target cross-entropy of Hinton, Vinyals & Dean 2015 (arXiv 1503.02531).

        L_KD = T^2 * mean_i [ -sum_k softmax(z_t / T)_ik * log_softmax(z_s / T)_ik ]

    The T^2 factor keeps the gradient's magnitude comparable as T changes (the soft
    targets' gradients scale as 1/T^2). This is the reference study's formula: a
    cross-entropy, not a KL divergence; the two differ by the teacher's entropy, a
    constant with no gradient for the student.
    """
    t = float(temperature)
    soft_targets = F.softmax(teacher_logits / t, dim=-1)
    log_probs = F.log_softmax(student_logits / t, dim=-1)
    return -(soft_targets * log_probs).sum(dim=-1).mean() * (t * t)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
            alpha: float, temperature: float) -> torch.Tensor:
    """alpha * L_KD + (1 - alpha) * CE(student, labels).

    Convention (the reference study's): **alpha weights the distillation term**; alpha = 0
    is plain training on hard labels, alpha = 1 pure distillation. Some libraries
    (torchdistill, several tutorials) use the opposite convention. With alpha = 0 the
    teacher's logits are not used and may be None, so no teacher forward is needed.
    """
    if alpha == 0:
        return F.cross_entropy(student_logits, labels)
    if teacher_logits is None:
        raise ValueError("kd_loss with alpha > 0 needs teacher logits")
    soft = distillation_loss(student_logits, teacher_logits, temperature)
    if alpha == 1:
        return soft
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


def packed_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
                   alpha: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """``kd_loss`` for N students at once: logits [N, B, C], alpha and temperature [N]; returns [N].

    Student i's loss is exactly ``kd_loss(student_logits[i], teacher_logits, labels, alpha[i],
    temperature[i])`` (alpha 0 contributes no distillation term, alpha 1 no hard-label term).
    Without teacher logits every student is trained on hard labels alone.
    """
    n = student_logits.shape[0]
    log_p = F.log_softmax(student_logits, dim=-1)
    hard = -log_p.gather(-1, labels.expand(n, -1).unsqueeze(-1)).squeeze(-1).mean(dim=1)
    if teacher_logits is None:
        return hard
    t = temperature.view(n, 1, 1)
    soft_targets = F.softmax(teacher_logits.unsqueeze(0) / t, dim=-1)
    soft = -(soft_targets * F.log_softmax(student_logits / t, dim=-1)).sum(dim=-1).mean(dim=1) * temperature ** 2
    return alpha * soft + (1.0 - alpha) * hard
