"""An uploaded file checked before it costs memory or compute: size, pixel count, and a decode like training's."""

from __future__ import annotations

import io
import warnings

import numpy as np

from raydf.data.images import BadImage, decode_bytes
from raydf.errors import DataError


class BadUpload(DataError):
    """An upload that cannot be scored; `status` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status

    def __reduce__(self):
        return BadUpload, (str(self), self.status)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the file's header without decoding its pixels; None when Pillow cannot tell."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: the caller applies its own limit
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Exception:  # not an image Pillow knows, or a header it refuses: decode_upload's decode says why
        return None


def decode_upload(data: bytes, name: str, max_bytes: int, max_pixels: int) -> np.ndarray:
    """The upload as (H, W, 3) uint8 RGB at its own size, decoded exactly like a training image.

    Raises:
        BadUpload: empty (400), larger than `max_bytes` (413), more than `max_pixels` pixels (413: checked from the
            header, before decoding), not an image (415), or corrupt / truncated (422).
    """
    if not data:
        raise BadUpload(f"{name}: the upload is empty (0 bytes); send an image file in the form field 'file'", 400)
    if len(data) > max_bytes:
        raise BadUpload(
            f"{name}: the upload is {len(data) / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.1f} MiB "
            f"(serve.max_upload_mb)",
            413,
        )
    wh = image_size(data)
    if wh is not None and wh[0] * wh[1] > max_pixels:
        raise BadUpload(
            f"{name}: the image is {wh[0]}x{wh[1]} pixels ({wh[0] * wh[1] / 1e6:.0f} megapixels); the limit is "
            f"{max_pixels / 1e6:g} megapixels (serve.max_pixels): send a smaller image",
            413,
        )
    try:
        rgb = decode_bytes(data, name)
    except BadImage as e:
        not_image = "not an image" in e.reason or e.reason.startswith(("unsupported format", "not a recognised"))
        raise BadUpload(f"{name}: {e.reason}", 415 if not_image else 422) from None
    if rgb.shape[0] * rgb.shape[1] > max_pixels:  # a format whose header Pillow could not read
        raise BadUpload(f"{name}: the image has more than {max_pixels / 1e6:g} megapixels (serve.max_pixels)", 413)
    return rgb
