"""Input normalisation: the per-channel mean and std a network's weights expect, `(x / 255 - mean) / std`."""

from __future__ import annotations

from dataclasses import dataclass

from raydf.config import DEFAULT_MODEL, IMAGENET_MEAN, IMAGENET_STD, ModelConfig

# facenet-pytorch's fixed_image_standardization, (x - 127.5) / 128, as mean and std of x / 255.
FACENET_MEAN = (0.5, 0.5, 0.5)
FACENET_STD = (128 / 255,) * 3


@dataclass(frozen=True)
class Normalization:
    """Per-RGB-channel mean and std of inputs scaled to [0, 1]."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_meta(cls, meta: dict) -> Normalization:
        """What a fold checkpoint records; ImageNet's for checkpoints from before raydf recorded it."""
        norm = meta.get("input_norm")
        return cls(tuple(norm["mean"]), tuple(norm["std"])) if norm else cls()


IMAGENET = Normalization()


def input_normalization(model: ModelConfig) -> Normalization:
    """`model.mean` / `model.std` when set; else what the start weights were trained with; else ImageNet's.

    - `model.pretrained` of a timm network (offline or downloaded): its `pretrained_cfg` (0.5 / 0.5 for the
      TensorFlow EfficientNet-Lite weights; ImageNet's for most others);
    - facenet's vggface2 / casia-webface: its fixed standardisation, (x - 127.5) / 128;
    - from scratch, or `model.weights` (a file whose training is unknown): ImageNet's, raydf's values before
      checkpoints recorded theirs (set model.mean / model.std for a file trained otherwise).
    """
    if model.mean is not None and model.std is not None:
        return Normalization(tuple(model.mean), tuple(model.std))
    if not model.pretrained:
        return IMAGENET
    if model.name == DEFAULT_MODEL:
        return Normalization(FACENET_MEAN, FACENET_STD)
    import timm

    cfg = timm.models.get_pretrained_cfg(model.name)
    if cfg is None or cfg.mean is None or cfg.std is None:
        return IMAGENET
    return Normalization(tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std))
