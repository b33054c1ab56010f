"""Where the ensemble looks: Grad-CAM of the soft vote's P(fake), by captum, and its overlay on the face."""

from __future__ import annotations

import io
import weakref

import numpy as np
import torch

from raydf.config import DEFAULT_MODEL
from raydf.inference.ensemble import FoldEnsemble

_CAM_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {crop: layer}, found once
MIN_CAM_SIDE = 7  # a map coarser than this says little about where (InceptionResnetV1's block8 is 1x1 at 80 px)


def cam_layer(model: torch.nn.Module, name: str, crop: int) -> torch.nn.Module:
    """The layer whose activations Grad-CAM weighs: the deepest feature stage whose map is still at least
    MIN_CAM_SIDE pixels across for a `crop` px input (else the finest stage). Stages: InceptionResnetV1's
    `repeat_1`, `repeat_2`, `block8`; a timm model's `feature_info` stages (EfficientNet's `blocks.*`, ...).
    Found with one probe forward pass per model and size, then remembered (a server explains many requests)."""
    known = _CAM_LAYERS.setdefault(model, {})
    if crop not in known:
        known[crop] = _find_cam_layer(model, name, crop)
    return known[crop]


def _find_cam_layer(model: torch.nn.Module, name: str, crop: int) -> torch.nn.Module:
    stages = ["repeat_1", "repeat_2", "block8"] if name == DEFAULT_MODEL else [f["module"] for f in model.feature_info]
    modules = [model.get_submodule(stage) for stage in stages]
    sides: dict[int, int] = {}
    hooks = [
        m.register_forward_hook(lambda mod, args, out, i=i: sides.__setitem__(i, min(out.shape[-2:])))
        for i, m in enumerate(modules)
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, crop, crop, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    fine = [i for i in range(len(modules)) if sides.get(i, 0) >= MIN_CAM_SIDE]
    return modules[fine[-1]] if fine else modules[max(sides, key=sides.get)]


def grad_cam(ensemble: FoldEnsemble, images: np.ndarray) -> np.ndarray:
    """Grad-CAM of the ensemble's P(fake) for uint8 images (B, resize, resize, 3): (B, crop, crop) in [0, 1].

    The soft vote is the mean of the K folds' P(fake), and Grad-CAM before its ReLU is linear in the score's
    gradient, so the ensemble's map is the mean of the folds' maps (each upsampled to the input), then ReLU and
    scaled so that each image's strongest pixel is 1. Computed in fp32 (no autocast) for stable gradients.
    """
    from captum.attr import LayerAttribution, LayerGradCam  # ~1 s to import: only a process that explains pays it

    crop = ensemble.settings.crop
    maps = []
    with ensemble.lock, torch.enable_grad():
        x = ensemble.inputs(images).contiguous()  # (B, 3, crop, crop)
        for model in ensemble.models:
            cam = LayerGradCam(
                lambda t, m=model: torch.softmax(m(t).float(), dim=1), cam_layer(model, ensemble.settings.model, crop)
            )
            attr = cam.attribute(x, target=1, relu_attributions=False)  # (B, 1, h, w) at the layer's resolution
            maps.append(LayerAttribution.interpolate(attr.detach(), (crop, crop), interpolate_mode="bilinear"))
    mean = torch.relu(torch.stack(maps).mean(0))[:, 0]  # (B, crop, crop)
    peak = mean.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return (mean / peak).float().cpu().numpy()


def overlay_png(face: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> bytes:
    """A PNG of the face (H, W, 3) uint8 with the heatmap (H, W) in [0, 1] over it in matplotlib's `jet` colours."""
    from matplotlib import colormaps
    from PIL import Image

    colours = colormaps["jet"](heat)[..., :3] * 255  # (H, W, 3)
    blended = (1 - alpha) * face.astype(np.float32) + alpha * colours
    buf = io.BytesIO()
    Image.fromarray(blended.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
