"""The network: facenet-pytorch's InceptionResnetV1 (the seed's, trained from scratch) or a timm model, 2 classes."""

from __future__ import annotations

import torch

from raydf.config import DEFAULT_MODEL


def build_model(dropout: float, name: str = DEFAULT_MODEL) -> torch.nn.Module:
    """A 2-class network with dropout before its classifier; no weights are downloaded.

    `name`: "inception_resnet_v1" (InceptionResnetV1(pretrained=None), as the seed used it) or any timm model name
    (`efficientnet_b0`, `legacy_xception`, `resnet18`, ...), created with `num_classes=2, drop_rate=dropout`.
    The libraries are imported here, not at module import: each costs seconds, and a process needs only one.
    """
    if name == DEFAULT_MODEL:
        from facenet_pytorch import InceptionResnetV1

        return InceptionResnetV1(pretrained=None, classify=True, num_classes=2, dropout_prob=dropout)
    import timm

    return timm.create_model(name, pretrained=False, num_classes=2, drop_rate=dropout)
