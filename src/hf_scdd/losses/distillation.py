"""Post-training losses: KD against a teacher's softened distribution, and cross-entropy on mixed labels.

SC-DD post-trains the student with KL(batchmean) between the student's and the teacher's
temperature-softened distributions on the *same* augmented, mixed batch, and no cross-entropy term; the
hard-label mode (for HLR) uses lam·CE(own) + (1 − lam)·CE(partner) on the same mixed batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float, t2: bool = False) -> torch.Tensor:
    """KL(batchmean) between softmax(student/T) and the teacher's softened distribution (SC-DD, no CE)."""
    loss = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), teacher_probs, reduction="batchmean")
    return loss * temperature**2 if t2 else loss


def mixed_hard_loss(logits: torch.Tensor, y_own: torch.Tensor, y_partner: torch.Tensor, lam: float) -> torch.Tensor:
    """Cross-entropy on mixed class ids: lam·CE(own) + (1 − lam)·CE(partner)."""
    return lam * F.cross_entropy(logits, y_own) + (1.0 - lam) * F.cross_entropy(logits, y_partner)
