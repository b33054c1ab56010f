"""Decoding: each image is read once, checked, converted to RGB and resized to the pipeline's first size.

Reading is also the pre-flight check: the bytes are read once, checked for truncation, decoded (OpenCV,
then Pillow for what OpenCV cannot read) and hashed, so an unreadable file is found, with its reason,
before any training starts, and byte-identical files can be reported.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import tempfile
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, TypeVar

import cv2
import numpy as np
import pyarrow.fs as pafs
from PIL import Image, ImageOps, UnidentifiedImageError

from raydf.errors import DataError

T = TypeVar("T")

# OpenCV logs an [ERROR] line per file it cannot decode; every such file is reported here with its reason.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


class BadImage(DataError):
    """One file that is not a usable image; `reason` says why in a few words."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot decode {path}: {reason}. Fix or remove it from the data set.")
        self.path, self.reason = path, reason

    def __reduce__(self):  # pickled by Ray with its two arguments, not the formatted message
        return BadImage, (self.path, self.reason)


def read_image(path: str) -> tuple[np.ndarray, str]:
    """Read one image file as (H, W, 3) uint8 RGB at its own size, and the SHA-256 of its bytes.

    OpenCV's `IMREAD_COLOR` applies EXIF rotation and turns grey, grey+alpha, RGBA, palette, 16-bit and
    CMYK images into 8-bit BGR (alpha is dropped); BMP, WebP, TIFF and, in recent OpenCV, GIF included.
    Pillow decodes what OpenCV refuses (e.g. ICO, GIF on older OpenCV, a PNG without its end chunk).

    Raises:
        BadImage: missing, empty, truncated, not an image, or a format neither library reads.
    """
    try:
        data = read_file(path)
    except FileNotFoundError:
        raise BadImage(path, "file not found") from None
    except IsADirectoryError:
        raise BadImage(path, "is a folder, not an image file") from None
    except OSError as e:
        raise BadImage(path, f"cannot be read ({e.strerror or e})") from None
    return decode_bytes(data, path), hashlib.sha256(data).hexdigest()


def is_uri(path: str) -> bool:
    """`s3://bucket/a.jpg`, `gs://...`, `file:///...`: read through pyarrow's file systems, not `open()`."""
    return "://" in path


@functools.lru_cache(maxsize=16)
def _filesystem(scheme_and_host: str) -> pafs.FileSystem:
    # One file system per bucket and process: creating an S3 one resolves credentials and the region (~100 ms).
    return pafs.FileSystem.from_uri(scheme_and_host)[0]


def _split_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    scheme, _, rest = uri.partition("://")
    if scheme == "file":
        return pafs.LocalFileSystem(), rest
    host, _, key = rest.partition("/")
    return _filesystem(f"{scheme}://{host}"), f"{host}/{key}"


def read_file(path: str) -> bytes:
    """A file's bytes: a local (or shared) path with `open()`, a URI through pyarrow (one request per object)."""
    if not is_uri(path):
        with open(path, "rb") as f:
            return f.read()
    fs, inner = _split_uri(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(path)
    if info.type == pafs.FileType.Directory:
        raise IsADirectoryError(path)
    with fs.open_input_file(inner) as f:
        return f.read()


def file_stamp(path: str) -> tuple[int, int] | None:
    """(size in bytes, mtime in ns) of a path or URI, None when missing: what cache keys are made of."""
    try:
        if not is_uri(path):
            st = os.stat(path)
            return st.st_size, st.st_mtime_ns
        fs, inner = _split_uri(path)
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.NotFound:
            return None
        return int(info.size or 0), int(info.mtime_ns or 0)
    except OSError:
        return None


def decode_bytes(data: bytes, path: str) -> np.ndarray:
    """An image file's bytes as (H, W, 3) uint8 RGB at its own size: `read_image`'s decode, shared with uploads to
    the server so that they are decoded exactly like the training and test images. `path` is what a BadImage names.
    """
    if not data:
        raise BadImage(path, "empty file (0 bytes)")
    if _truncated_jpeg(data):
        # libjpeg only warns ("Premature end of JPEG file"): depending on the OpenCV version and on
        # imread/imdecode, a cut-off JPEG comes back as None or as an image whose lower part is grey.
        raise BadImage(path, "truncated JPEG: the file ends before the image data does (incomplete download or copy?)")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is not None:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return _pillow_rgb(data, path)


def _truncated_jpeg(data: bytes) -> bool:
    """A JPEG is complete when an end-of-image marker (FF D9) follows its last start-of-scan (FF DA).

    Inside entropy-coded data every FF byte is followed by 00 or a restart code, so neither marker can
    occur there: a file cut anywhere inside (or after) its last scan has no FF D9 after the last FF DA.
    """
    if not data.startswith(b"\xff\xd8\xff"):
        return False
    last_scan = data.rfind(b"\xff\xda")
    return last_scan < 0 or data.find(b"\xff\xd9", last_scan) < 0


def _pillow_rgb(data: bytes, path: str) -> np.ndarray:
    """Pillow's decode of what OpenCV refused, EXIF-rotated and converted to RGB; or BadImage saying why."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or "image"
            try:
                im.load()  # raises on truncated data (unless a library set ImageFile.LOAD_TRUNCATED_IMAGES)
                return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                raise BadImage(path, f"corrupt {fmt} file ({e})") from None
    except UnidentifiedImageError:
        raise BadImage(path, _not_an_image(data)) from None


# Formats users meet in scraped or exported folders that neither OpenCV nor Pillow (without plug-ins) reads.
_SIGNATURES = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"8BPS", "a Photoshop PSD file"),
)
_BRANDS = {
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"mif1": "HEIF",
    b"avif": "AVIF",
    b"isom": "MP4 video",
    b"mp42": "MP4 video",
    b"qt  ": "QuickTime video",
}


def _not_an_image(data: bytes) -> str:
    """Name what a file that is not a readable image seems to be, from its first bytes."""
    for magic, what in _SIGNATURES:
        if data.startswith(magic):
            return f"unsupported format: {what}, not an image"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        name = _BRANDS.get(brand, brand.decode("latin-1").strip() or "ISO media")
        return f"unsupported format: {name}; convert it to JPEG or PNG"
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c.isspace() for c in text):
        shown = " ".join(text.split())[:40]
        if "<svg" in text:
            return "unsupported format: SVG (vector graphics); convert it to PNG"
        if shown.startswith("<"):  # typically a failed download: the server's error page under the image's name
            return f"HTML or XML, not an image (starts with {shown!r}): download it again"
        return f"text, not an image (starts with {shown!r})"
    return f"not a recognised image format (starts with bytes {data[:8].hex(' ')})"


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize to (size, size, 3): INTER_AREA when shrinking (no aliasing), INTER_LINEAR when enlarging."""
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    interp = cv2.INTER_AREA if h > size and w > size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def center_crop(images: np.ndarray, crop: int) -> np.ndarray:
    """Centre-crop a batch (N, H, W, 3): the same pixels as `raydf.data.transforms.eval_transform`.

    Here rather than in `raydf.data.transforms` so that inference actors need not import albumentations (~0.6 s
    of every actor's start).
    """
    h, w = images.shape[1:3]
    top, left = (h - crop) // 2, (w - crop) // 2
    return images[:, top : top + crop, left : left + crop]


def decode_image(path: str, size: int) -> np.ndarray:
    """Read one image as (size, size, 3) uint8 RGB; BadImage (a DataError naming the file) if unreadable.

    The seed passed `cv2.COLOR_BGR2RGB` as the read flag, so its images stayed BGR; these are RGB.
    """
    return resize_square(read_image(path)[0], size)


def _each(paths: Sequence[str], work: Callable[[int], T], threads: int) -> list[T | BadImage]:
    """`work(i)` for every row on a thread pool (OpenCV and hashlib release the GIL); BadImage kept as a value."""

    def guarded(i: int) -> T | BadImage:
        try:
            return work(i)
        except BadImage as e:
            return e

    pool = ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1)
    try:
        return list(pool.map(guarded, range(len(paths))))
    finally:
        # On Ctrl-C/SIGTERM drop the rows not started: `with` would wait for the whole set to be decoded.
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class DecodedSet:
    """The outcome of decoding a set of files: the usable images, and why the others are not."""

    images: np.ndarray  # (n_usable, size, size, 3) uint8, the usable rows in their original order
    usable: np.ndarray  # (n,) bool, one per input path
    reasons: dict[int, str]  # input row -> why it is not usable
    sha256: list[Optional[str]]  # (n,) content hash of every input path (None if unreadable)


def decode_checked(paths: Sequence[str], size: int, threads: int = 0, out: Optional[np.ndarray] = None) -> DecodedSet:
    """Decode every path once into one array, in parallel, keeping going past unreadable files.

    `out`: the (N, size, size, 3) uint8 array to fill, e.g. a memory-mapped scratch file (`scratch_array`) so that a
    set larger than memory is never held in it.
    """
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8) if out is None else out

    def work(i: int) -> str:
        rgb, digest = read_image(paths[i])
        out[i] = resize_square(rgb, size)
        return digest

    results = _each(paths, work, threads)
    usable = np.array([not isinstance(r, BadImage) for r in results], dtype=bool)
    if not usable.all():
        # Compact in place (bad rows are few): no second full-size array next to the first.
        for dst, src in enumerate(np.flatnonzero(usable)):
            if dst != src:
                out[dst] = out[src]
        out = out[: int(usable.sum())]
    return DecodedSet(
        images=out,
        usable=usable,
        reasons={i: r.reason for i, r in enumerate(results) if isinstance(r, BadImage)},
        sha256=[None if isinstance(r, BadImage) else r for r in results],
    )


def scratch_array(folder: str, shape: tuple[int, ...]) -> np.ndarray:
    """A uint8 `.npy` array backed by a file in `folder` that has no name: its pages go to the page cache (and to
    disk under memory pressure) instead of the process's memory, and nothing is left behind when it is dropped,
    whatever ends the process. `keep_scratch` can give it a name later (the decoded cache file), so the decoded
    set is written once, not decoded here and copied there.

    The file is an O_TMPFILE where the file system has them (Linux: ext4, xfs, btrfs, tmpfs); elsewhere a temp
    file unlinked at once, which `keep_scratch` cannot name (the caller copies instead).
    """
    os.makedirs(folder, exist_ok=True)
    try:
        fd = os.open(folder, os.O_TMPFILE | os.O_RDWR, 0o644)
    except (AttributeError, OSError):  # no O_TMPFILE on this system or file system
        fd = None
    if fd is None:
        tmp_fd, path = tempfile.mkstemp(prefix=".decoding-", suffix=".npy", dir=folder)
        os.close(tmp_fd)
        try:
            return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        finally:
            os.unlink(path)
    with os.fdopen(os.dup(fd), "w+b") as f:  # the .npy header, then the pixels as a memory map after it
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
        offset = f.tell()
        f.truncate(offset + int(np.prod(shape)))
        array = np.memmap(f, dtype=np.uint8, mode="r+", offset=offset, shape=tuple(shape))
    array.scratch_fd = fd  # attributes do not pass to slices: a compacted (sliced) scratch array is copied instead
    weakref.finalize(array, os.close, fd)
    return array


def keep_scratch(array: np.ndarray, path: str) -> bool:
    """Give `scratch_array`'s nameless file the name `path` (complete and synced first); False where it cannot
    (not such an array, or a slice of one, or a file system without linkat): then write `array` out instead."""
    fd = getattr(array, "scratch_fd", None)
    if fd is None or not isinstance(array, np.memmap):
        return False
    try:
        array.flush()
        os.fsync(fd)
        # linkat(AT_SYMLINK_FOLLOW) through /proc names the open file itself; os.link calls it only when given a
        # directory fd (without one, CPython calls link(), which would link the /proc symlink: EXDEV).
        folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.link(f"/proc/self/fd/{fd}", os.path.basename(path), dst_dir_fd=folder, follow_symlinks=True)
        finally:
            os.close(folder)
    except OSError:
        return False
    return True


def check_images(paths: Sequence[str], threads: int = 0) -> tuple[dict[int, str], list[Optional[str]]]:
    """Read and fully decode every path without keeping the pixels: (row -> reason, content hash per row)."""
    results = _each(paths, lambda i: read_image(paths[i])[1], threads)
    reasons = {i: r.reason for i, r in enumerate(results) if isinstance(r, BadImage)}
    return reasons, [None if isinstance(r, BadImage) else r for r in results]


def decode_images(paths: Sequence[str], size: int, threads: int = 0) -> np.ndarray:
    """Decode many images in parallel into one (N, size, size, 3) uint8 array; DataError if any is unreadable."""
    decoded = decode_checked(paths, size, threads)
    if decoded.reasons:
        shown = "\n  ".join(f"row {i}: {paths[i]}: {r}" for i, r in sorted(decoded.reasons.items())[:10])
        raise DataError(f"{len(decoded.reasons)} of {len(paths)} images cannot be decoded:\n  {shown}")
    return decoded.images
