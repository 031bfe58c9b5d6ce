"""Loss functions, each a plain function with its formula and source.

Every loss takes logits of shape ``[..., B, K]`` (any leading axes: the members of a pack, or
none for a model alone) and returns one value per leading index, ``[...]``, the mean over the
batch. Per-member settings (alpha, temperature) are tensors of the leading shape, or floats.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _lead(value: torch.Tensor | float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-member setting as a tensor of the leading shape ``[...]``, and shaped ``[..., 1, 1]``
    to broadcast against ``[..., B, K]`` logits."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return t, t.reshape(t.shape + (1, 1))


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Hard-label cross-entropy, ``mean_i -log softmax(z_i)[y_i]`` over the batch, per leading index.

    With ``weight`` (one per class) it is the weighted mean ``sum_i w[y_i] nll_i / sum_i w[y_i]``,
    as ``F.cross_entropy(weight=...)`` computes it (class imbalance). ``labels``: ``[..., B]``."""
    nll = -torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    if weight is None:
        return nll.mean(dim=-1)
    w = weight[labels]
    return (w * nll).sum(dim=-1) / w.sum(dim=-1)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: torch.Tensor | float) -> torch.Tensor:
    """Soft-target cross-entropy of Hinton, Vinyals & Dean 2015 (arXiv 1503.02531).

        L_KD = T^2 * mean_i [ -sum_k softmax(z_t / T)_ik * log_softmax(z_s / T)_ik ]

    The T^2 factor keeps the gradient's magnitude comparable as T changes (the soft
    targets' gradients scale as 1/T^2). This is the reference study's formula: a
    cross-entropy, not a KL divergence; the two differ by the teacher's entropy, a
    constant with no gradient for the student.
    """
    t, tb = _lead(temperature, student_logits)
    soft_targets = F.softmax(teacher_logits / tb, dim=-1)
    log_probs = F.log_softmax(student_logits / tb, dim=-1)
    return -(soft_targets * log_probs).sum(dim=-1).mean(dim=-1) * (t * t)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
            alpha: torch.Tensor | float, temperature: torch.Tensor | float,
            weight: torch.Tensor | None = None, subclasses: int = 1) -> torch.Tensor:
    """alpha * L_KD + (1 - alpha) * CE(class logits, labels): Hinton distillation, and the students
    of subclass distillation (Mueller, Kornblith & Hinton 2020, arXiv 2002.03936), whose L_KD is
    on all C x S subclass logits and whose hard-label term is on the class logits (``subclasses``
    S > 1; see ``class_logits``).

    Convention (the reference study's): **alpha weights the distillation term**; alpha = 0
    is plain training on hard labels (a student from scratch), alpha = 1 pure distillation. Some
    libraries (torchdistill, several tutorials) use the opposite convention. Without teacher
    logits (None) every member trains on hard labels alone. ``weight``: per-class weights of the
    hard-label term (class imbalance).
    """
    hard = cross_entropy(class_logits(student_logits, subclasses), labels, weight)
    if teacher_logits is None:
        return hard
    a = torch.as_tensor(alpha, dtype=hard.dtype, device=hard.device)
    return a * distillation_loss(student_logits, teacher_logits, temperature) + (1.0 - a) * hard


def class_logits(subclass_logits: torch.Tensor, subclasses: int) -> torch.Tensor:
    """Class logits from C x S subclass logits: logsumexp over each class's block of S
    (Mueller, Kornblith & Hinton 2020, arXiv 2002.03936), so that softmax over classes is the
    sum of the softmax over that class's subclasses. Outputs are ordered class-major.
    With S = 1 the logits are the class logits."""
    if subclasses == 1:
        return subclass_logits
    *lead, cs = subclass_logits.shape
    return torch.logsumexp(subclass_logits.reshape(*lead, cs // subclasses, subclasses), dim=-1)


def subclass_aux_loss(subclass_logits: torch.Tensor, aux_temperature: torch.Tensor | float = 1.0) -> torch.Tensor:
    """The auxiliary loss of subclass distillation (Mueller, Kornblith & Hinton 2020, eq. 3).

    Each example's vector of subclass logits z_i (length D = C * S) is normalised to zero mean
    and unit variance over its D entries and scaled by 1 / sqrt(T_aux * D), so that
    v_i . v_i = 1 / T_aux. With G_ij = v_i . v_j over the batch of B examples:

        L_aux = mean_i logsumexp_j G_ij - 1 / T_aux - log B

    a contrastive loss that pushes different examples' subclass vectors apart, so the teacher
    spreads examples over its subclasses instead of collapsing each class onto one. This is the
    paper's per-example normalisation (the reference study normalised over the whole batch).
    """
    b, d = subclass_logits.shape[-2:]
    t, tb = _lead(aux_temperature, subclass_logits)
    z = subclass_logits - subclass_logits.mean(dim=-1, keepdim=True)
    z = z / z.std(dim=-1, unbiased=False, keepdim=True).clamp_min(1e-6)
    v = z / (tb * d).sqrt()
    gram = v @ v.transpose(-1, -2)
    return torch.logsumexp(gram, dim=-1).mean(dim=-1) - 1.0 / t - torch.log(torch.tensor(float(b)))


def subclass_teacher_loss(subclass_logits: torch.Tensor, labels: torch.Tensor, subclasses: int,
                          beta: torch.Tensor | float, aux_temperature: torch.Tensor | float = 1.0,
                          weight: torch.Tensor | None = None) -> torch.Tensor:
    """CE(class logits, labels) + beta * L_aux: the subclass teacher's objective."""
    ce = cross_entropy(class_logits(subclass_logits, subclasses), labels, weight)
    return ce + torch.as_tensor(beta, dtype=ce.dtype) * subclass_aux_loss(subclass_logits, aux_temperature)
