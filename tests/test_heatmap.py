"""Grad-CAM of the ensemble's P(fake) (captum): it lights up the pixels that raise P(fake), in the right place."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from raydf.inference.ensemble import EnsembleSettings, FoldEnsemble
from raydf.inference.heatmap import grad_cam, overlay_png


class ChannelDetector(torch.nn.Module):
    """P(fake) rises with the amount of one colour channel in the image: a 1x1 conv picks the channel (ReLU cuts the
    rest), and the score is its mean. Grad-CAM of such a net is that channel's map: zero where the colour is absent."""

    def __init__(self, channel: int):
        super().__init__()
        self.features = torch.nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[0, channel] = 1.0
            self.features.bias.zero_()
        self.feature_info = [{"module": "features"}]  # where heatmap.cam_layer finds the last stage of a timm net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = torch.relu(self.features(x)).mean((1, 2, 3))  # (B,)
        return torch.stack([torch.zeros_like(score), score], 1)  # logits (B, 2): real, fake


def ensemble_of(*models: torch.nn.Module, resize: int = 64, crop: int = 48) -> FoldEnsemble:
    ens = FoldEnsemble([], EnsembleSettings(model="channel_detector", resize=resize, crop=crop, precision="fp32"))
    ens.models = [m.eval() for m in models]
    return ens


def patches() -> np.ndarray:
    """A black 64 px image with a red square in the crop's top-right and a green one in its bottom-left (not on the
    diagonal: a map transposed by mistake would swap them)."""
    image = np.zeros((1, 64, 64, 3), np.uint8)
    image[0, 8:24, 40:56, 0] = 255  # the 48 px centre crop holds rows/cols 8..55: crop rows 0..15, cols 32..47
    image[0, 40:56, 8:24, 1] = 255  # crop rows 32..47, cols 0..15
    return image


def test_the_map_lights_up_the_evidence_and_nothing_else():
    heat = grad_cam(ensemble_of(ChannelDetector(0)), patches())[0]  # only red counts
    assert heat.shape == (48, 48) and heat.max() == 1.0
    red, green, background = heat[2:14, 34:46], heat[34:46, 2:14], heat[20:30, 20:30]
    assert red.min() > 0.9 and green.max() < 1e-6 and background.max() < 1e-6


def test_the_ensemble_map_is_the_mean_of_its_folds():
    """Two folds looking at different colours: the soft vote's map shows both squares (each fold alone shows one).
    Not equally bright: after ImageNet normalisation a full green pixel is 2.43, a full red one 2.25."""
    heat = grad_cam(ensemble_of(ChannelDetector(0), ChannelDetector(1)), patches())[0]
    red, green, background = heat[2:14, 34:46].mean(), heat[34:46, 2:14].mean(), heat[20:30, 20:30].max()
    assert red > 0.5 and green > 0.5 and background < 1e-6


def test_overlay_is_a_png_of_the_face_size():
    face = np.full((48, 48, 3), 128, np.uint8)
    png = Image.open(io.BytesIO(overlay_png(face, np.linspace(0, 1, 48 * 48).reshape(48, 48))))
    assert png.format == "PNG" and png.size == (48, 48)
    pixels = np.asarray(png).astype(int)
    assert pixels[0, 0, 2] > pixels[0, 0, 0] and pixels[-1, -1, 0] > pixels[-1, -1, 2]  # cold blue to hot red
