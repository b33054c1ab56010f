"""Catalog: read a training or test set (CSV or folder) into a pandas table of absolute image paths.

Core module: no Ray. Files are not opened here (a later pre-flight step checks them); only the
spec itself must exist. Every problem a user can cause is a `DataError` naming the file and row.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from raydf.errors import DataError

# What a folder scan lists. HEIC and SVG are listed too, though they cannot be decoded: the pre-flight check
# then reports them by name (bad_inputs.csv) instead of the scan leaving them out silently.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".jfif",
    ".png",
    ".bmp",
    ".webp",
    ".tif",
    ".tiff",
    ".gif",
    ".avif",
    ".heic",
    ".heif",
    ".svg",
)

PATH_COLUMNS: tuple[str, ...] = ("path", "filepath", "file_path", "image_path", "file", "filename", "image", "img")
LABEL_COLUMNS: tuple[str, ...] = ("label", "target", "class", "is_fake")

_LABEL_WORDS = {"real": 0, "fake": 1, "0": 0, "1": 1, "false": 0, "true": 1}
# Cells that mean "label not known" in a test CSV (a Kaggle template leaves the label empty).
_MISSING = {"", "nan", "na", "n/a", "none", "null"}
_FORMATS = "a CSV with columns path,label (or path,real,fake), or a folder with real/ and fake/ subfolders"


def read_train(
    spec: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    group_by: str | None = None,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
) -> pd.DataFrame:
    """Read a labelled training set.

    Args:
        spec: a CSV (`path,label`, `path,real,fake`, optional `group`) or a folder with `real/` and `fake/`.
        image_root: folder that relative CSV paths resolve against (default: the CSV's folder).
        group_by: the CSV column naming each image's source (`train.group_by`); default: a `group` column
            if there is one.
        extensions: the files a folder scan lists (the face extraction adds videos).

    Returns:
        Columns `path` (absolute str), `label` (int64, 1 = fake, 0 = real) and, when the CSV has one,
        `group` (str); RangeIndex 0..n-1.

    Raises:
        DataError: the spec is missing or unreadable, or a column, cell or class is unusable, or one
            image is listed twice.
    """
    src = _existing(spec)
    if src.is_dir():
        if group_by is not None:
            raise DataError(
                f"train.group_by={group_by} names a CSV column, but data.train {src} is a folder; "
                "list the images in a CSV with that column, or drop train.group_by"
            )
        classes = _class_dirs(src)
        if classes is None:
            raise DataError(
                f"training folder {src} has no real/ and fake/ subfolders; put real images under "
                f"{src / 'real'} and fake ones under {src / 'fake'}, or pass {_FORMATS}"
            )
        df = _scan_classes(src, classes, extensions)
    else:
        table = _read_csv(src)
        df = _paths(table, src, image_root)
        labels = _labels(table, src, required=True)
        assert labels is not None
        df["label"] = labels
        _reject_repeated_paths(df, table.index, src)
        group = _group_column(table, src, group_by)
        if group is not None:
            df["group"] = _group(table, group, src)
    check_two_classes(df, f"training set {src}", extensions)
    return df.reset_index(drop=True)


def read_test(
    spec: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
) -> pd.DataFrame:
    """Read a test set, keeping its row order (a Kaggle template's order is the submission's order).

    Args:
        spec: a folder (labelled when it has `real/` and `fake/`), a CSV of paths with an optional
            label column, or a Kaggle submission template `image,label` with an empty label column.
        image_root: folder that relative CSV paths resolve against (default: the CSV's folder).

    Returns:
        Columns `path` (absolute str), `image` (the name to write in the submission: the CSV cell as
        written, or the POSIX path relative to the folder) and `label` (int64) only when every row's
        label is known; RangeIndex 0..n-1.

    Raises:
        DataError: the spec is missing or unreadable, has no images, or a column or cell is unusable.
    """
    src = _existing(spec)
    if src.is_dir():
        classes = _class_dirs(src)
        if classes is not None:
            df = _scan_classes(src, classes, extensions)
        else:
            files = _images_under(src, extensions)
            df = pd.DataFrame({"path": [str(f) for f in files]})
        if df.empty:
            raise DataError(
                f"test folder {src} contains no images ({', '.join(extensions)}); "
                "add images or point data.test elsewhere"
            )
        df.insert(1, "image", [Path(p).relative_to(src).as_posix() for p in df["path"]])
        return df.reset_index(drop=True)
    table = _read_csv(src)
    df = _paths(table, src, image_root)
    df["image"] = table[_path_column(table, src)].tolist()
    labels = _labels(table, src, required=False)
    if labels is not None:
        df["label"] = labels
    return df


def _existing(spec: str | os.PathLike) -> Path:
    """Return the spec as an absolute resolved path, or fail saying what the spec must be."""
    src = Path(spec).expanduser().resolve()
    if not src.exists():
        shown = os.fspath(spec) if str(src) == os.fspath(spec) else f"{os.fspath(spec)} (resolved: {src})"
        raise DataError(f"data path {shown} does not exist; it must be {_FORMATS}")
    return src


def _read_csv(src: Path) -> pd.DataFrame:
    """Read every cell as a string so paths like `001.jpg` and labels like `1.0` stay as written."""
    try:
        # Blank lines are kept (then dropped) so index i is always line i + 2 of the file.
        table = pd.read_csv(
            src, dtype=str, keep_default_na=False, skip_blank_lines=False, index_col=False, encoding="utf-8-sig"
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"CSV {src} is empty; it needs a header line and one row per image") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"CSV {src} cannot be parsed ({exc}); fix the file (UTF-8, comma-separated)") from None
    table.columns = [str(c).strip() for c in table.columns]
    # Column by column, not cell by cell: a million-row CSV takes seconds, not minutes.
    table = table.fillna("").astype(str)
    blank = np.ones(len(table), dtype=bool)
    for i in range(table.shape[1]):
        blank &= (table.iloc[:, i].str.strip() == "").to_numpy()
    table = table[~blank]
    if table.empty:
        raise DataError(f"CSV {src} has a header but no rows; add one row per image")
    return table


def _line(index: int) -> str:
    """Name a table row by its line in the file (line 1 is the header)."""
    return f"line {index + 2}"


def _find(table: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    """First column whose header matches one of `names` (in the order of `names`), ignoring case."""
    lower = {c.lower(): c for c in reversed(table.columns)}
    return next((lower[n] for n in names if n in lower), None)


def _path_column(table: pd.DataFrame, src: Path) -> str:
    col = _find(table, PATH_COLUMNS)
    if col is None:
        raise DataError(
            f"CSV {src} has no path column: found columns {list(table.columns)}; "
            f"name the image path column one of {', '.join(PATH_COLUMNS)}"
        )
    return col


def _paths(table: pd.DataFrame, src: Path, image_root: str | os.PathLike | None) -> pd.DataFrame:
    """Resolve the path column against image_root (or the CSV's folder); absolute paths and URIs stay as they are."""
    col = _path_column(table, src)
    cells = table[col].str.strip()
    empty = table.index[(cells == "").to_numpy()]
    if len(empty):
        where = ", ".join(_line(i) for i in empty[:5])
        raise DataError(f"CSV {src}: empty {col!r} cell at {where}; give every row an image path or delete the row")
    root = Path(image_root).expanduser().resolve() if image_root is not None else src.parent
    return pd.DataFrame({"path": resolve_paths(cells.tolist(), root)})


def resolve_paths(values: list[str], root: Path) -> list[str]:
    """`str((root / Path(v).expanduser()).resolve())` of every value, URIs (`s3://...`, `file://...`) left as they are.

    The same answer without a `resolve()` (one `lstat` per path component) per row: each distinct folder is
    resolved once and listed once for symlinks; only a file that is itself a symlink is resolved on its own.
    """
    out = list(values)
    full: dict[int, str] = {}  # row -> root-joined path, for every local path
    base = str(root).rstrip("/")  # root is absolute: "/" becomes "", then "/" + v
    for i, v in enumerate(values):
        if "://" in v:
            continue
        if v.startswith("~"):
            v = str(Path(v).expanduser())
        full[i] = v if v.startswith("/") else f"{base}/{v}"
    folders: dict[str, str] = {}  # folder as joined -> resolved
    links: dict[str, frozenset[str]] = {}  # resolved folder -> names of its entries that are symlinks
    for i, path in full.items():
        folder, _, name = path.rpartition("/")
        if name in ("", ".", "..") or not folder:
            out[i] = str(Path(path).resolve())
            continue
        real = folders.get(folder)
        if real is None:
            real = folders[folder] = str(Path(folder).resolve())
            if real not in links:
                links[real] = _symlinks_in(real)
        out[i] = str(Path(path).resolve()) if name in links[real] else f"{real.rstrip('/')}/{name}"
    return out


def _symlinks_in(folder: str) -> frozenset[str]:
    """Names of the entries of `folder` that are symlinks (none when it cannot be listed)."""
    try:
        with os.scandir(folder) as entries:
            return frozenset(e.name for e in entries if e.is_symlink())
    except OSError:
        return frozenset()


def _labels(table: pd.DataFrame, src: Path, required: bool) -> pd.Series | None:
    """Labels as int64 (1 = fake); None when optional and any row's label is unknown."""
    col = _find(table, LABEL_COLUMNS)
    if col is None:
        real, fake = _find(table, ("real",)), _find(table, ("fake",))
        if real is not None and fake is not None:
            return _one_hot(table, real, fake, src)
        if not required:
            return None
        raise DataError(
            f"CSV {src} has no label column: found columns {list(table.columns)}; add a column named one of "
            f"{', '.join(LABEL_COLUMNS)} (0/1 or real/fake), or one-hot columns real,fake"
        )
    cells = table[col].str.strip().str.lower()
    values = _map_distinct(cells, _parse_label)
    # In a test CSV an empty cell means "unknown" (a Kaggle template); a typo is still an error.
    unknown = cells.isin(_MISSING) if not required else pd.Series(False, index=cells.index)
    _reject_bad(table[col], values.isna() & ~unknown, col, src, "0/1 or real/fake")
    if unknown.any():
        return None
    return values.astype("int64").reset_index(drop=True)


def _map_distinct(cells: pd.Series, fn) -> pd.Series:
    """`cells.map(fn)` calling `fn` once per distinct value, not once per row."""
    return cells.map({v: fn(v) for v in pd.unique(cells)})


def _parse_label(cell: str) -> int | None:
    if cell in _LABEL_WORDS:
        return _LABEL_WORDS[cell]
    try:
        number = float(cell)
    except ValueError:
        return None
    return int(number) if number in (0.0, 1.0) else None


def _one_hot(table: pd.DataFrame, real: str, fake: str, src: Path) -> pd.Series:
    """The seed's `real,fake` columns: label = fake; each row must have exactly one 1."""
    numbers = {}
    for col in (real, fake):
        numbers[col] = _map_distinct(table[col].str.strip(), _parse_label)
        _reject_bad(table[col], numbers[col].isna(), col, src, "0 or 1")
    total = numbers[real] + numbers[fake]
    bad = total.index[(total != 1).to_numpy()]
    if len(bad):
        where = ", ".join(f"{_line(i)} (real={table.at[i, real]!r}, fake={table.at[i, fake]!r})" for i in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(
            f"CSV {src}: real + fake must be 1 in every row, but not at {where}{more}; "
            f"mark each image either real or fake"
        )
    return numbers[fake].astype("int64").reset_index(drop=True)


def _reject_bad(raw: pd.Series, bad: pd.Series, col: str, src: Path, accepted: str) -> None:
    """Fail listing the distinct unusable values (up to 10) and the lines of the first few."""
    if not bad.any():
        return
    values = list(dict.fromkeys(raw[bad].tolist()))
    lines = ", ".join(_line(i) for i in raw.index[bad][:5])
    shown = ", ".join(repr(v) if v.strip() else "'' (empty)" for v in values[:10])
    more = f" (and {len(values) - 10} more)" if len(values) > 10 else ""
    raise DataError(
        f"CSV {src}: column {col!r} has unknown label values {shown}{more} at {lines}; use {accepted} (1 = fake)"
    )


def _reject_repeated_paths(df: pd.DataFrame, lines: pd.Index, src: Path) -> None:
    """One image listed twice would sit on both sides of a fold split (or carry two labels): name the lines."""
    repeated = df[df["path"].duplicated(keep=False)]
    if repeated.empty:
        return
    shown = []
    for path, rows in list(repeated.groupby("path", sort=False))[:5]:
        where = ", ".join(_line(lines[i]) for i in rows.index)
        conflict = " with conflicting labels" if rows["label"].nunique() > 1 else ""
        shown.append(f"{path} at {where}{conflict}")
    n = repeated["path"].nunique()
    more = f" and {n - 5} more" if n > 5 else ""
    raise DataError(
        f"CSV {src} lists the same image more than once: {'; '.join(shown)}{more}; "
        "keep one row per image (with its correct label)"
    )


def _group_column(table: pd.DataFrame, src: Path, group_by: str | None) -> str | None:
    """The column naming each image's source: `group_by` (must exist), else a `group` column if any."""
    if group_by is None:
        return _find(table, ("group",))
    col = _find(table, (group_by.lower(),))
    if col is None:
        raise DataError(
            f"train.group_by={group_by} but CSV {src} has no such column: found columns "
            f"{list(table.columns)}; set train.group_by to one of them"
        )
    return col


def _group(table: pd.DataFrame, col: str, src: Path) -> list[str]:
    """Group ids as strings; an empty one would silently pool unrelated images into one group."""
    cells = table[col].str.strip()
    empty = table.index[(cells == "").to_numpy()]
    if len(empty):
        where = ", ".join(_line(i) for i in empty[:5])
        raise DataError(f"CSV {src}: empty {col!r} cell at {where}; give every row a group or drop the column")
    return cells.tolist()


def _class_dirs(src: Path) -> dict[int, Path] | None:
    """The `real/` and `fake/` subfolders (any case) as {label: folder}; None unless both exist."""
    found: dict[int, list[Path]] = {0: [], 1: []}
    for child in src.iterdir():
        if child.is_dir() and child.name.lower() in ("real", "fake"):
            found[_LABEL_WORDS[child.name.lower()]].append(child)
    for dirs in found.values():
        if len(dirs) > 1:
            names = [d.name for d in dirs]
            raise DataError(
                f"folder {src} has several class folders {names} differing only in case; merge them into one"
            )
    if not (found[0] and found[1]):
        return None
    return {label: dirs[0] for label, dirs in found.items()}


def _images_under(folder: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files under `folder`, recursively, sorted by relative path.

    Hidden files and folders are skipped: macOS `._x.jpg` resource forks carry an image extension
    but are not images.
    """
    # Files are not resolved one by one: a symlinked image keeps its place (and name) in the folder.
    files = [
        f
        for f in folder.rglob("*")
        if f.suffix.lower() in extensions
        and f.is_file()
        and not any(part.startswith(".") for part in f.relative_to(folder).parts)
    ]
    return sorted(files, key=lambda f: f.relative_to(folder).as_posix())


def _scan_classes(src: Path, classes: dict[int, Path], extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> pd.DataFrame:
    """All images of both class folders, sorted by path relative to `src`."""
    rows = [(str(f), label) for label, folder in classes.items() for f in _images_under(folder, extensions)]
    rows.sort(key=lambda r: Path(r[0]).relative_to(src).as_posix())
    df = pd.DataFrame(rows, columns=["path", "label"])
    df["path"] = df["path"].astype(str)
    df["label"] = df["label"].astype("int64")
    return df


def check_two_classes(df: pd.DataFrame, what: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> None:
    """A classifier needs both classes; say which one is present and how often (`what` names the set)."""
    n_fake, n_real = int((df["label"] == 1).sum()), int((df["label"] == 0).sum())
    if n_fake == 0 and n_real == 0:
        exts = ", ".join(extensions)
        raise DataError(f"{what} contains no images ({exts}); add real and fake images")
    if n_fake == 0 or n_real == 0:
        present, count, missing = ("fake", n_fake, "real") if n_real == 0 else ("real", n_real, "fake")
        raise DataError(
            f"{what} has only one class: {count} {present} images and no {missing} images; "
            "add examples of both real (0) and fake (1) faces"
        )
