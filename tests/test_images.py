"""Reading images: every format users bring is converted to RGB; every broken file is refused with its reason."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED
from PIL import Image

from raydf.data.images import BadImage, check_images, decode_checked, decode_image, decode_images, read_image
from raydf.errors import DataError


def _picture(h: int = 96, w: int = 96) -> np.ndarray:
    """An RGB test picture with smooth colour gradients and a sharp block: (h, w, 3) uint8."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([255 * x / w, 255 * y / h, 128 + 100 * np.sin(x / 9) * np.cos(y / 7)], axis=-1)
    rgb[h // 4 : h // 2, w // 4 : w // 2] = (250, 30, 40)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


# ---------------------------------------------------------------- images that must work


def _write_gray_png(path, rgb):
    Image.fromarray(rgb).convert("L").save(path)


def _write_gray_jpg(path, rgb):
    Image.fromarray(rgb).convert("L").save(path, quality=95)


def _write_rgba_png(path, rgb):
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])  # half transparent everywhere
    Image.fromarray(rgba, "RGBA").save(path)


def _write_palette_png(path, rgb):
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(path)


def _write_16bit_png(path, rgb):
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)


def _write_cmyk_jpg(path, rgb):
    Image.fromarray(rgb).convert("CMYK").save(path, quality=95)


def _write_bmp(path, rgb):
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _write_webp(path, rgb):
    Image.fromarray(rgb).save(path, lossless=True)


def _write_gif(path, rgb):
    Image.fromarray(rgb).save(path)


def _write_tiff(path, rgb):
    Image.fromarray(rgb).save(path)


def _write_ico(path, rgb):  # OpenCV has no ICO decoder: Pillow's fallback reads it
    Image.fromarray(rgb).save(path, sizes=[rgb.shape[:2]])


# name -> (writer, tolerance of the mean absolute difference to the source, in 8-bit levels)
CONVERTIBLE = {
    "gray.png": (_write_gray_png, None),
    "gray.jpg": (_write_gray_jpg, None),
    "rgba.png": (_write_rgba_png, 0),
    "palette.png": (_write_palette_png, 8),
    "16bit.png": (_write_16bit_png, 0),
    "cmyk.jpg": (_write_cmyk_jpg, 6),
    "image.bmp": (_write_bmp, 0),
    "image.webp": (_write_webp, 0),
    "image.gif": (_write_gif, 8),
    "image.tiff": (_write_tiff, 0),
    "icon.ico": (_write_ico, 0),
}


@pytest.mark.parametrize("name", list(CONVERTIBLE))
def test_convertible_formats_decode_to_the_same_rgb_picture(tmp_path, name):
    writer, tolerance = CONVERTIBLE[name]
    rgb = _picture()
    path = tmp_path / name
    writer(path, rgb)
    got, digest = read_image(str(path))
    assert got.dtype == np.uint8 and got.shape == (96, 96, 3)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    if tolerance is None:  # grey: three equal channels, the luminance of the source
        assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()
        assert _mean_diff(got[..., 0], cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)) < 3
    else:
        assert _mean_diff(got, rgb) <= tolerance + 0.5  # RGB order, not BGR: the red block stays red
        assert (got[30, 30].astype(int) - got[30, 30][::-1].astype(int))[0] > 100


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    rgb = _picture(64, 96)  # wider than high
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: the camera was turned; display rotated 90 degrees clockwise
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    got, _ = read_image(str(tmp_path / "rotated.jpg"))
    upright = np.rot90(rgb, k=-1)  # clockwise
    assert got.shape == upright.shape == (96, 64, 3)
    assert _mean_diff(got, upright) < 4


def test_small_image_is_upscaled_and_huge_one_shrunk(tmp_path):
    Image.fromarray(_picture(20, 20)).save(tmp_path / "small.png")
    big = cv2.resize(_picture(), (4000, 3000), interpolation=cv2.INTER_LINEAR)
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=90)
    small, large = decode_image(str(tmp_path / "small.png"), 64), decode_image(str(tmp_path / "big.jpg"), 64)
    assert small.shape == large.shape == (64, 64, 3) and small.dtype == large.dtype == np.uint8
    reference = cv2.resize(_picture(), (64, 64), interpolation=cv2.INTER_AREA)
    assert _mean_diff(large, reference) < 6


# ---------------------------------------------------------------- images that are bad


def _jpeg_bytes() -> bytes:
    ok, buf = cv2.imencode(".jpg", _picture(128, 128))
    return buf.tobytes()


BAD = {
    "missing.jpg": (None, "file not found"),
    "zero.jpg": (b"", "empty file (0 bytes)"),
    "truncated.jpg": (_jpeg_bytes()[: len(_jpeg_bytes()) * 2 // 3], "truncated JPEG"),
    "cut-at-the-end.jpg": (_jpeg_bytes()[:-2], "truncated JPEG"),  # only the end-of-image marker is missing
    "page.jpg": (b"<!DOCTYPE html>\n<html><body><h1>403 Forbidden</h1></body></html>\n", "HTML or XML, not an image"),
    "notes.jpg": (b"label this one as fake\n", "text, not an image"),
    "doc.jpg": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "unsupported format: a PDF document"),
    "phone.jpg": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "unsupported format: HEIC"),
    "logo.svg": (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "unsupported format: SVG"),
    "noise.png": (bytes(range(256)) * 4, "not a recognised image format"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_files_are_refused_with_their_reason(tmp_path, name):
    content, reason = BAD[name]
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BadImage) as info:
        read_image(str(path))
    assert info.value.reason.startswith(reason)
    assert isinstance(info.value, DataError) and str(path) in str(info.value)


def test_truncated_png_is_refused(tmp_path):
    _write_rgba_png(tmp_path / "full.png", _picture())
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImage, match="corrupt PNG"):
        read_image(str(tmp_path / "cut.png"))


def test_a_folder_is_not_an_image(tmp_path):
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(BadImage, match="is a folder"):
        read_image(str(tmp_path / "dir.jpg"))


@pytest.mark.usefixtures("shared_data")  # fails under CI if the shared set is missing
@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_real_face_jpeg_is_refused(tmp_path, keep):
    """OpenCV's imread turns a cut-off JPEG into a partly grey image with a mere warning: it must be refused."""
    data = (SHARED / "real/00000.jpg").read_bytes()
    path = tmp_path / "00000.jpg"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(BadImage, match="truncated JPEG"):
        read_image(str(path))
    shutil.copy(SHARED / "real/00000.jpg", tmp_path / "whole.jpg")
    assert read_image(str(tmp_path / "whole.jpg"))[0].shape == (256, 256, 3)


# ---------------------------------------------------------------- many files at once


def _mixed_set(tmp_path: Path) -> list[str]:
    pictures = [_picture(64 + 8 * i, 64) for i in range(4)]
    paths = []
    for i, rgb in enumerate(pictures):
        Image.fromarray(rgb).save(tmp_path / f"good{i}.png")
        paths.append(str(tmp_path / f"good{i}.png"))
    (tmp_path / "empty.jpg").write_bytes(b"")
    shutil.copy(tmp_path / "good1.png", tmp_path / "copy-of-good1.png")
    return [
        paths[0],
        str(tmp_path / "empty.jpg"),
        paths[1],
        str(tmp_path / "gone.jpg"),
        paths[2],
        str(tmp_path / "copy-of-good1.png"),
        paths[3],
    ]


def test_decode_checked_keeps_every_good_image_in_order_and_names_the_bad_rows(tmp_path):
    paths = _mixed_set(tmp_path)
    decoded = decode_checked(paths, 48, threads=2)
    good = [0, 2, 4, 5, 6]
    assert decoded.usable.tolist() == [i in good for i in range(7)]
    assert decoded.reasons == {1: "empty file (0 bytes)", 3: "file not found"}
    assert decoded.images.shape == (5, 48, 48, 3)
    for k, i in enumerate(good):
        np.testing.assert_array_equal(decoded.images[k], decode_image(paths[i], 48))
    assert decoded.sha256[1] is None and decoded.sha256[3] is None
    assert decoded.sha256[2] == decoded.sha256[5] and len({decoded.sha256[i] for i in good}) == 4


def test_check_images_finds_the_same_bad_rows_without_keeping_pixels(tmp_path):
    paths = _mixed_set(tmp_path)
    reasons, digests = check_images(paths, threads=2)
    assert reasons == decode_checked(paths, 32).reasons
    assert digests == decode_checked(paths, 32).sha256


def test_decode_images_still_fails_naming_every_bad_row(tmp_path):
    paths = _mixed_set(tmp_path)
    with pytest.raises(DataError) as info:
        decode_images(paths, 32)
    msg = str(info.value)
    assert "2 of 7 images" in msg and "row 1:" in msg and "empty.jpg" in msg and "gone.jpg: file not found" in msg
