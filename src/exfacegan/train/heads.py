"""Margin softmax heads (CosFace, ArcFace) over an L2-normalised weight [num_classes, emb].

Under DDP the head is replicated like any other module: with a few thousand identities the
weight is small, and replication keeps every rank's logits over all classes (no partial FC).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


class MarginHead(nn.Module):
    """Cosine logits s*cos(theta) with a margin applied at the target class only."""

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.35):
        super().__init__()
        self.s, self.m = s, m
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim).normal_(0, 0.01))

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float())).clamp(-1, 1)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.cosine(embeddings)
        target = cos.gather(1, labels[:, None])
        logits = cos.scatter(1, labels[:, None], self.target_logit(target))
        return logits * self.s


class CosFace(MarginHead):
    """cos(theta) - m at the target (Wang et al. 2018)."""

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target - self.m


class ArcFace(MarginHead):
    """cos(theta + m) at the target; beyond theta > pi - m falls back to cos - m*sin(m) (arcface_torch)."""

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.5,
                 easy_margin: bool = False):
        super().__init__(embedding_dim, num_classes, s, m)
        self.easy_margin = easy_margin
        self.th = math.cos(math.pi - m)
        self.mm = math.sin(math.pi - m) * m

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        sin = (1.0 - cos_target ** 2).clamp_min(0).sqrt()
        with_margin = cos_target * math.cos(self.m) - sin * math.sin(self.m)
        if self.easy_margin:
            return torch.where(cos_target > 0, with_margin, cos_target)
        return torch.where(cos_target > self.th, with_margin, cos_target - self.mm)
