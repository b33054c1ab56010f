"""The network: facenet-pytorch's InceptionResnetV1, trained from scratch with a 2-class head."""

from __future__ import annotations

import torch
from facenet_pytorch import InceptionResnetV1


def build_model(dropout: float) -> torch.nn.Module:
    """InceptionResnetV1(pretrained=None) as the seed used it: no weights are downloaded."""
    return InceptionResnetV1(pretrained=None, classify=True, num_classes=2, dropout_prob=dropout)
