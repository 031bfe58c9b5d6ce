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
            alpha: float, temperature: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """alpha * L_KD + (1 - alpha) * CE(student, labels).

    Convention (the reference study's): **alpha weights the distillation term**; alpha = 0
    is plain training on hard labels, alpha = 1 pure distillation. Some libraries
    (torchdistill, several tutorials) use the opposite convention. With alpha = 0 the
    teacher's logits are not used and may be None, so no teacher forward is needed.
    ``weight``: per-class weights of the hard-label term (class imbalance), as in F.cross_entropy.
    """
    if alpha == 0:
        return F.cross_entropy(student_logits, labels, weight=weight)
    if teacher_logits is None:
        raise ValueError("kd_loss with alpha > 0 needs teacher logits")
    soft = distillation_loss(student_logits, teacher_logits, temperature)
    if alpha == 1:
        return soft
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels, weight=weight)


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


def class_logits(subclass_logits: torch.Tensor, subclasses: int) -> torch.Tensor:
    """Class logits from C x S subclass logits: logsumexp over each class's block of S
    (Mueller, Kornblith & Hinton 2020, arXiv 2002.03936), so that softmax over classes is the
    sum of the softmax over that class's subclasses. Outputs are ordered class-major."""
    *lead, cs = subclass_logits.shape
    return torch.logsumexp(subclass_logits.reshape(*lead, cs // subclasses, subclasses), dim=-1)


def subclass_aux_loss(subclass_logits: torch.Tensor, aux_temperature: float = 1.0) -> torch.Tensor:
    """The auxiliary loss of subclass distillation (Mueller, Kornblith & Hinton 2020, eq. 3).

    Each example's vector of subclass logits z_i (length D = C * S) is normalised to zero mean
    and unit variance over its D entries and scaled by 1 / sqrt(T_aux * D), so that
    v_i . v_i = 1 / T_aux. With G_ij = v_i . v_j over the batch of B examples:

        L_aux = mean_i logsumexp_j G_ij - 1 / T_aux - log B

    a contrastive loss that pushes different examples' subclass vectors apart, so the teacher
    spreads examples over its subclasses instead of collapsing each class onto one. This is the
    paper's per-example normalisation (the reference study normalised over the whole batch).
    """
    b, d = subclass_logits.shape
    z = subclass_logits - subclass_logits.mean(dim=1, keepdim=True)
    z = z / z.std(dim=1, unbiased=False, keepdim=True).clamp_min(1e-6)
    v = z / (aux_temperature * d) ** 0.5
    gram = v @ v.T
    return torch.logsumexp(gram, dim=1).mean() - 1.0 / aux_temperature - torch.log(torch.tensor(float(b)))


def subclass_teacher_loss(subclass_logits: torch.Tensor, labels: torch.Tensor, subclasses: int, beta: float,
                          aux_temperature: float = 1.0, weight: torch.Tensor | None = None) -> torch.Tensor:
    """CE(class logits, labels) + beta * L_aux: the subclass teacher's objective."""
    ce = F.cross_entropy(class_logits(subclass_logits, subclasses), labels, weight=weight)
    return ce + beta * subclass_aux_loss(subclass_logits, aux_temperature) if beta else ce


def subclass_student_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
                          subclasses: int, alpha: float, temperature: float,
                          weight: torch.Tensor | None = None) -> torch.Tensor:
    """alpha * T^2 * CE(softmax(teacher subclass logits / T), student subclass logits / T)
    + (1 - alpha) * CE(student class logits, labels): distillation on the teacher's subclasses,
    hard labels on the classes (alpha weights the distillation term, as in ``kd_loss``)."""
    hard = F.cross_entropy(class_logits(student_logits, subclasses), labels, weight=weight)
    if alpha == 0:
        return hard
    if teacher_logits is None:
        raise ValueError("subclass_student_loss with alpha > 0 needs teacher logits")
    soft = distillation_loss(student_logits, teacher_logits, temperature)
    return soft if alpha == 1 else alpha * soft + (1.0 - alpha) * hard
