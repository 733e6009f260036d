"""Losses for fine-tuning, in plain torch (no extra dependency), each small enough to read.

Metric learning on labelled embeddings ``(n, d)`` (L2-normalised inside) and labels ``(n,)``:

``triplet``  batch-hard triplet (Hermans et al. 2017): for every anchor, its farthest positive and
             nearest negative in the batch, hinge on the cosine-distance gap with a margin.
``ms``       multi-similarity (Wang et al. 2019): pairs mined by the hardest opposite pair, then soft
             log-sum-exp weighting of positives (alpha) and negatives (beta) around a threshold.
``supcon``   supervised contrastive (Khosla et al. 2020): InfoNCE where every same-label item in the
             batch is a positive.
``arcface``  additive angular margin (Deng et al. 2019): a learnt class-centre matrix; the right
             class's angle is widened by ``margin`` before a scaled softmax. Needs the class count.

Image-text contrastive, on matching rows of image and text embeddings:

``clip_loss``    symmetric InfoNCE with the model's learnt temperature (Radford et al. 2021).
``siglip_loss``  pairwise sigmoid loss with learnt scale and bias (Zhai et al. 2023).

>>> import torch
>>> x, y = torch.randn(8, 16), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
>>> float(make_metric_loss("supcon", dim=16, n_classes=4)(x, y)) > 0
True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

METRIC_LOSSES = ("triplet", "ms", "supcon", "arcface")


def _pairs(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cosine similarity matrix, positive mask (same label, not self) and negative mask."""
    x = F.normalize(embeddings.float(), dim=1)
    sim = x @ x.T
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return sim, same & ~eye, ~same


class TripletLoss(nn.Module):
    """Batch-hard triplet loss on cosine distance ``1 - cos``; anchors without a positive or a negative
    in the batch are left out (a P x K batch sampler makes them rare)."""

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        sim, pos, neg = _pairs(embeddings, labels)
        valid = pos.any(1) & neg.any(1)
        if not valid.any():
            return embeddings.sum() * 0.0  # keeps the graph: a batch without triplets is a zero step
        hardest_pos = torch.where(pos, sim, torch.full_like(sim, 2.0)).min(1).values  # least similar positive
        hardest_neg = torch.where(neg, sim, torch.full_like(sim, -2.0)).max(1).values  # most similar negative
        return F.relu(hardest_neg - hardest_pos + self.margin)[valid].mean()


class MultiSimilarityLoss(nn.Module):
    """Multi-similarity loss with its pair mining; defaults are the paper's (alpha 2, beta 50, lambda 0.5)."""

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, epsilon: float = 0.1):
        super().__init__()
        self.alpha, self.beta, self.base, self.epsilon = alpha, beta, base, epsilon

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        sim, pos, neg = _pairs(embeddings, labels)
        big = torch.full_like(sim, 4.0)
        min_pos = torch.where(pos, sim, big).min(1, keepdim=True).values
        max_neg = torch.where(neg, sim, -big).max(1, keepdim=True).values
        # keep the informative pairs: negatives closer than the hardest positive, positives farther
        # than the hardest negative (each with a margin epsilon)
        pos_kept = pos & (sim - self.epsilon < max_neg)
        neg_kept = neg & (sim + self.epsilon > min_pos)
        pos_term = _soft_plus_sum(-self.alpha * (sim - self.base), pos_kept) / self.alpha
        neg_term = _soft_plus_sum(self.beta * (sim - self.base), neg_kept) / self.beta
        valid = pos.any(1)
        if not valid.any():
            return embeddings.sum() * 0.0
        return (pos_term + neg_term)[valid].mean()


def _soft_plus_sum(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise ``log(1 + sum_{mask} exp(logits))``, computed stably (0 for an empty row)."""
    masked = torch.where(mask, logits, torch.full_like(logits, -math.inf))
    zero = torch.zeros(len(logits), 1, device=logits.device, dtype=logits.dtype)
    return torch.logsumexp(torch.cat([zero, masked], dim=1), dim=1)


class SupConLoss(nn.Module):
    """Supervised contrastive loss (the "L_out" form: mean of log-probabilities over positives)."""

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        sim, pos, _ = _pairs(embeddings, labels)
        eye = torch.eye(len(labels), dtype=torch.bool, device=sim.device)
        logits = (sim / self.temperature).masked_fill(eye, -math.inf)  # an item is never its own candidate
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        valid = pos.any(1)
        if not valid.any():
            return embeddings.sum() * 0.0
        mean_pos = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1) / pos.sum(1).clamp(min=1)
        return -mean_pos[valid].mean()


class ArcFaceLoss(nn.Module):
    """Additive angular margin softmax over learnt, normalised class centres.

    ``scale`` 30 and ``margin`` 0.3 suit small data sets better than the face-recognition defaults
    (64, 0.5), which need many images per class to converge.
    """

    def __init__(self, dim: int, n_classes: int, margin: float = 0.3, scale: float = 30.0):
        super().__init__()
        if n_classes < 2:
            raise ValueError("ArcFace needs at least 2 classes")
        self.margin, self.scale = margin, scale
        self.centres = nn.Parameter(torch.empty(n_classes, dim))
        nn.init.xavier_uniform_(self.centres)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(embeddings.float(), dim=1) @ F.normalize(self.centres.float(), dim=1).T
        cos = cos.clamp(-1 + 1e-6, 1 - 1e-6)
        target = cos.gather(1, labels[:, None])
        theta = torch.acos(target)
        # past pi - m the margin would make the target logit larger again: fall back to a linear penalty
        with_margin = torch.where(
            theta + self.margin < math.pi, torch.cos(theta + self.margin), target - self.margin * math.sin(self.margin)
        )
        logits = cos.scatter(1, labels[:, None], with_margin)
        return F.cross_entropy(self.scale * logits, labels)


def make_metric_loss(name: str, dim: int, n_classes: int, **kwargs) -> nn.Module:
    """A metric-learning loss by name (see :data:`METRIC_LOSSES`); keyword arguments go to its constructor.

    >>> make_metric_loss("triplet", dim=128, n_classes=10, margin=0.3).margin
    0.3
    """
    if name == "triplet":
        return TripletLoss(**kwargs)
    if name == "ms":
        return MultiSimilarityLoss(**kwargs)
    if name == "supcon":
        return SupConLoss(**kwargs)
    if name == "arcface":
        return ArcFaceLoss(dim, n_classes, **kwargs)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(METRIC_LOSSES)}")


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``image`` matches row i of ``text``; ``logit_scale`` is log(1/T)."""
    image, text = F.normalize(image.float(), dim=1), F.normalize(text.float(), dim=1)
    logits = image @ text.T * logit_scale.float().exp().clamp(max=100.0)
    target = torch.arange(len(image), device=image.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def siglip_loss(
    image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor
) -> torch.Tensor:
    """Sigmoid loss: every (image, text) pair is an independent binary match / no-match decision."""
    image, text = F.normalize(image.float(), dim=1), F.normalize(text.float(), dim=1)
    logits = image @ text.T * logit_scale.float().exp() + logit_bias.float()
    signs = 2 * torch.eye(len(image), device=image.device) - 1
    return -F.logsigmoid(signs * logits).sum() / len(image)
