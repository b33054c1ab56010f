"""Heatmaps of the most confident fakes and reals of a predicted set: what a user looks at to trust a detector."""

from __future__ import annotations

import io
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from raydf.data.images import center_crop, decode_image
from raydf.inference.ensemble import FoldEnsemble
from raydf.inference.heatmap import grad_cam, overlay_png
from raydf.runs.run_dir import write_csv
from raydf.runs.storage import RunStorage

INDEX = "index.csv"  # kind, rank, image, source, prob_fake, heatmap: one row per PNG in the folder
MIN_HEIGHT = 256  # heatmap pictures are enlarged (a whole number of times) to at least this many pixels high


def most_confident(prob_fake: np.ndarray, n: int) -> list[tuple[str, int, int]]:
    """(kind, rank, row) of the `n` highest P(fake) scored fake (> 0.5) and the `n` lowest scored real."""
    order = np.argsort(-prob_fake, kind="stable")
    fakes = [i for i in order[:n] if prob_fake[i] > 0.5]
    reals = [i for i in order[::-1][:n] if prob_fake[i] <= 0.5]
    return [("fake", r + 1, int(i)) for r, i in enumerate(fakes)] + [
        ("real", r + 1, int(i)) for r, i in enumerate(reals)
    ]


def side_by_side(face: np.ndarray, heat: np.ndarray) -> bytes:
    """A PNG of the model's input (crop, crop, 3) beside it with the heatmap over it, enlarged `scale(crop)` times
    (an 80 px crop is unreadable in a report)."""
    from PIL import Image

    overlay = np.asarray(Image.open(io.BytesIO(overlay_png(face, heat))).convert("RGB"))
    gap = np.full((face.shape[0], 4, 3), 255, np.uint8)
    picture = Image.fromarray(np.concatenate([face, gap, overlay], axis=1))
    k = scale(face.shape[0])
    if k > 1:
        picture = picture.resize((picture.width * k, picture.height * k), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def scale(crop: int) -> int:
    """How many times a heatmap picture of a `crop` px input is enlarged: to at least MIN_HEIGHT px high."""
    return max(1, -(-MIN_HEIGHT // crop))


def write_explanations(
    ensemble: FoldEnsemble,
    paths: Sequence[str],
    prob_fake: np.ndarray,
    n: int,
    storage: RunStorage,
    folder: str,
    names: Optional[Sequence[str]] = None,
) -> pd.DataFrame:
    """Grad-CAM PNGs of the `n` most confident fakes and reals among `paths` (scored `prob_fake`) into
    `folder` of `storage`, named `fake_01.png`, ..., `real_01.png`, ..., with `index.csv` listing them (`source`:
    `names[i]` for path i, e.g. the video/photo a face crop came from; else the path)."""
    picks = most_confident(np.asarray(prob_fake, dtype=float), n)
    rows = []
    if picks:
        s = ensemble.settings
        images = np.stack([decode_image(str(paths[i]), s.resize) for _, _, i in picks])  # (N, resize, resize, 3)
        heats = grad_cam(ensemble, images)  # (N, crop, crop)
        faces = center_crop(images, s.crop)
        for (kind, rank, i), face, heat in zip(picks, faces, heats):
            name = f"{kind}_{rank:02d}.png"
            storage.write_bytes(f"{folder}/{name}", side_by_side(np.ascontiguousarray(face), heat))
            rows.append(
                {
                    "kind": kind,
                    "rank": rank,
                    "image": str(paths[i]),
                    "source": str(paths[i] if names is None else names[i]),
                    "prob_fake": float(prob_fake[i]),
                    "heatmap": name,
                }
            )
    index = pd.DataFrame(rows, columns=["kind", "rank", "image", "source", "prob_fake", "heatmap"])
    write_csv(storage, f"{folder}/{INDEX}", index)
    return index
