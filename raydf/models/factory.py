"""The network: facenet-pytorch's InceptionResnetV1 (the seed's, trained from scratch) or a timm model, 2 classes."""

from __future__ import annotations

import torch

from raydf.config import DEFAULT_MODEL

# Standard deviation of a "small" classifier head's start: logits near 0, so the first loss is near ln 2 whatever
# the features' scale, and the head's first gradients stay small where they flow back into pretrained features.
HEAD_INIT_STD = 0.01


def build_model(dropout: float, name: str = DEFAULT_MODEL, head_init: str = "small") -> torch.nn.Module:
    """A 2-class network with dropout before its classifier; no weights are downloaded.

    `name`: "inception_resnet_v1" (InceptionResnetV1(pretrained=None), as the seed used it) or any timm model name
    (`efficientnet_b0`, `legacy_xception`, `resnet18`, ...), created with `num_classes=2, drop_rate=dropout`.
    `head_init`: "small" re-initialises the classifier (normal, std 0.01, bias 0); "library" keeps the library's
    own (timm's EfficientNet: uniform +-1/sqrt(2) = +-0.71, a first loss of 3-4 instead of ln 2 = 0.69).
    The libraries are imported here, not at module import: each costs seconds, and a process needs only one.
    """
    if name == DEFAULT_MODEL:
        from facenet_pytorch import InceptionResnetV1

        model = InceptionResnetV1(pretrained=None, classify=True, num_classes=2, dropout_prob=dropout)
        head = model.logits
    else:
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=2, drop_rate=dropout)
        head = model.get_classifier()
    if head_init == "small":
        init_small_head(head)
    return model


@torch.no_grad()
def init_small_head(head: torch.nn.Module) -> None:
    """Weights ~ N(0, HEAD_INIT_STD), biases 0, for every layer of the classifier (a Linear, or a 1x1 conv)."""
    for module in head.modules():
        if getattr(module, "weight", None) is not None and module.weight.dim() >= 2:
            if module.weight.is_meta:
                continue
            torch.nn.init.normal_(module.weight, std=HEAD_INIT_STD)
            if getattr(module, "bias", None) is not None:
                torch.nn.init.zeros_(module.bias)
