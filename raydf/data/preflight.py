"""Pre-flight check: before any training, every training and test image is read, decoded and hashed once.

The training set's check *is* its decode (`raydf.data.images.decode_checked`): the one parallel pass that fills
the array every fold trains on also finds the unreadable files. The test set is decoded later, inside
Ray Data, so here it is decoded once more on threads and the pixels are dropped. A full decode and not
a header check: a header check (Pillow's `open()` reads a few hundred bytes) passes truncated and
corrupt files, the commonest damage from an interrupted download or unzip, which would then fail at
prediction time, after all the training. Only the decoder Ray Data will run can vouch for it; it costs a
few milliseconds per image on every core, seconds for a Kaggle-sized test set, against minutes to hours
of training, and it gives content hashes that reveal test images identical to training images.

Policy (`data.on_bad`): `skip` leaves unreadable images out (the test ones get a flagged row with the
prior P(fake)), `error` stops before training naming them. Core module: no Ray.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from raydf.data.cache import cache_key
from raydf.data.catalog import check_two_classes
from raydf.data.images import check_images, decode_checked, scratch_array
from raydf.errors import DataError

log = logging.getLogger(__name__)

BAD_COLUMNS = ["set", "row", "path", "reason"]  # bad_inputs.csv; row: 0-based position in the set as read
DUPLICATE_COLUMNS = ["copy_group", "set", "row", "path", "label", "sha256"]  # duplicates.csv
_SHOWN = 10  # bad files named in a message


@dataclass
class CheckedInputs:
    """What training may use, and what was left out and why."""

    train: pd.DataFrame  # the usable training rows, in their order (RangeIndex)
    # (len(train), size, size, 3) uint8: the decoded training set, shared by every fold; None when the pre-flight
    # did not decode it (found in its cache, or an encoded or streamed cache)
    images: Optional[np.ndarray]
    content: list[str]  # SHA-256 of each usable training file: identical files are kept in one fold
    test_bad: dict[int, str]  # test row -> reason; those rows get the prior and a flag in the submission
    bad: pd.DataFrame  # BAD_COLUMNS: every unreadable image of both sets (bad_inputs.csv)
    duplicates: pd.DataFrame  # DUPLICATE_COLUMNS: byte-identical files across names (duplicates.csv)

    @property
    def prior(self) -> float:
        """P(fake) given to an unreadable test image: the fraction of fakes among the training images used."""
        return float(self.train["label"].mean())

    def bad_counts(self) -> dict[str, int]:
        return {s: int((self.bad["set"] == s).sum()) for s in ("train", "test")}


Check = Callable[[Sequence[str]], tuple[dict[int, str], list[Optional[str]]]]  # paths -> (row -> reason, hashes)


class CheckCache:
    """The pre-flight's findings (unreadable rows and their reasons, content hashes), kept under the key of both
    file lists with every file's size and mtime, like the decoded cache: a repeated or resumed run on the same
    files does not read them all again; a file added, replaced or touched makes a new check."""

    def __init__(self, train_paths: Sequence[str], test_paths: Sequence[str], folder: str):
        key = cache_key(train_paths, 0, "preflight-v1")[:12] + cache_key(test_paths, 0, "preflight-v1")[:12]
        self.file = Path(folder) / f"preflight-{len(train_paths)}-{len(test_paths)}-{key}.npz"

    def load(self) -> Optional[tuple[dict[int, str], list[Optional[str]], dict[int, str], list[Optional[str]]]]:
        try:
            with np.load(self.file, allow_pickle=False) as z:
                return (*_unpack(z, "train"), *_unpack(z, "test"))
        except (OSError, KeyError, ValueError):  # missing, or not a complete file: check again
            return None

    def save(self, train: tuple[dict[int, str], list], test: tuple[dict[int, str], list]) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        arrays = {**_packed(*train, "train"), **_packed(*test, "test")}
        tmp = self.file.with_name(self.file.name + f".{os.getpid()}.tmp.npz")
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, self.file)
        except OSError as e:  # a cache: a read-only or full cache folder costs the next run a check, nothing more
            log.warning("could not keep the pre-flight's result in %s: %s", self.file, e)
        finally:
            tmp.unlink(missing_ok=True)


def _packed(reasons: dict[int, str], hashes: list[Optional[str]], part: str) -> dict[str, np.ndarray]:
    rows = sorted(reasons)
    return {
        f"{part}_rows": np.array(rows, dtype=np.int64),
        f"{part}_reasons": np.array([reasons[i] for i in rows], dtype=str),
        f"{part}_sha256": np.array([h or "" for h in hashes], dtype="S64"),
    }


def _unpack(z, part: str) -> tuple[dict[int, str], list[Optional[str]]]:
    reasons = {int(i): str(r) for i, r in zip(z[f"{part}_rows"], z[f"{part}_reasons"])}
    return reasons, [h.decode() or None for h in z[f"{part}_sha256"]]


def preflight(
    train: pd.DataFrame,
    test: Optional[pd.DataFrame],
    size: int,
    threads: int = 0,
    on_bad: str = "skip",
    *,
    decode: bool = True,
    check: Optional[Check] = None,
    cache_folder: Optional[str] = None,
    decode_to_disk: bool = False,
) -> CheckedInputs:
    """Check every training and test image; apply the `on_bad` policy.

    `decode`: the training set is decoded (at `size` px) by the check itself, and the pixels kept for the
    decoded cache (`data.cache` memory, disk, off); otherwise only checked (encoded, stream). `check`: how a
    list of paths is checked (default: threads here; the Ray layer spreads it over the cluster's nodes).
    `cache_folder`: keep the findings there (`CheckCache`) and reuse them. `decode_to_disk`: decode into a
    memory-mapped scratch file in `cache_folder` (data.cache=disk: a set that is not meant to sit in memory).

    Raises:
        DataError: with `on_bad="error"`, when any image is unreadable (naming the first ones); with
            `skip`, when what is left cannot be trained on (one class) or no test image is readable.
    """
    t0 = time.time()
    train_paths, test_paths = train["path"].tolist(), [] if test is None else test["path"].tolist()
    cache = CheckCache(train_paths, test_paths, cache_folder) if cache_folder else None
    found = cache.load() if cache else None
    images, source = None, "checked"
    if found is not None:
        train_bad, train_content, test_bad, test_content = found
        source = "found in the pre-flight cache for"
    else:
        if decode and check is None:  # one pass: the check that decodes is the decode the folds train on
            out = scratch_array(cache_folder, (len(train_paths), size, size, 3)) if decode_to_disk else None
            decoded = decode_checked(train_paths, size, threads, out)
            images, train_bad, train_content = decoded.images, decoded.reasons, decoded.sha256
        else:
            train_bad, train_content = (check or functools.partial(check_images, threads=threads))(train_paths)
        test_bad, test_content = (
            (check or functools.partial(check_images, threads=threads))(test_paths) if test is not None else ({}, [])
        )
        if cache:
            cache.save((train_bad, train_content), (test_bad, test_content))
    bad = _bad_table(train, train_bad, test, test_bad)
    n_test = 0 if test is None else len(test)
    summary = f"{len(bad)} unreadable ({len(train_bad)} training, {len(test_bad)} test)" if len(bad) else "all readable"
    log.info(
        "pre-flight: %s %d training and %d test images in %.1fs: %s",
        source,
        len(train),
        n_test,
        time.time() - t0,
        summary,
    )
    if len(bad) and on_bad == "error":
        raise DataError(
            f"{len(bad)} of {len(train) + n_test} images cannot be read (data.on_bad=error):\n  "
            f"{_list_bad(bad)}\nFix or remove them, or set data.on_bad=skip to train without them "
            "(they are then listed in RUN_DIR/bad_inputs.csv)"
        )
    usable_rows = np.ones(len(train), dtype=bool)
    usable_rows[list(train_bad)] = False
    usable = train[usable_rows].reset_index(drop=True)
    content = [h for h in train_content if h is not None]
    if train_bad:
        check_two_classes(usable, f"the training set without its {len(train_bad)} unreadable images")
    if test is not None and len(test_bad) == len(test):
        raise DataError(
            f"none of the {len(test)} test images can be read:\n  {_list_bad(bad[bad['set'] == 'test'])}"
            "\nFix data.test (or data.test_root)"
        )
    if len(bad):
        flagged = f"; the {len(test_bad)} test ones get a row flagged bad_input in submission.csv" if test_bad else ""
        log.warning(
            "left out %d unreadable images (data.on_bad=skip; all listed in bad_inputs.csv in the run "
            "directory)%s:\n  %s",
            len(bad),
            flagged,
            _list_bad(bad),
        )
    duplicates = find_duplicates(usable, content, test, test_content)
    _warn_duplicates(duplicates)
    return CheckedInputs(
        train=usable, images=images, content=content, test_bad=test_bad, bad=bad, duplicates=duplicates
    )


def check_test_set(test: pd.DataFrame, threads: int = 0, on_bad: str = "skip") -> dict[int, str]:
    """The pre-flight of a test set alone (`raydf.predict`): row -> reason of every unreadable image."""
    reasons, _ = check_images(test["path"].tolist(), threads)
    bad = _bad_table(test.iloc[:0], {}, test, reasons)
    if reasons and (on_bad == "error" or len(reasons) == len(test)):
        policy = " (data.on_bad=error in the run's config)" if on_bad == "error" else ""
        raise DataError(
            f"{len(reasons)} of {len(test)} images cannot be read:\n  {_list_bad(bad)}\nFix or remove them{policy}"
        )
    if reasons:
        log.warning(
            "%d of %d images cannot be read; they get the prior P(fake) and flag=bad_input:\n  %s",
            len(reasons),
            len(test),
            _list_bad(bad),
        )
    return reasons


def _bad_table(
    train: pd.DataFrame, train_bad: dict[int, str], test: Optional[pd.DataFrame], test_bad: dict[int, str]
) -> pd.DataFrame:
    rows = [("train", i, train["path"].iat[i], r) for i, r in sorted(train_bad.items())]
    if test is not None:
        rows += [("test", i, test["path"].iat[i], r) for i, r in sorted(test_bad.items())]
    return pd.DataFrame(rows, columns=BAD_COLUMNS)


def _list_bad(bad: pd.DataFrame) -> str:
    lines = [f"{s} row {r}: {p}: {why}" for s, r, p, why in bad.head(_SHOWN).itertuples(index=False)]
    if len(bad) > _SHOWN:
        lines.append(f"... and {len(bad) - _SHOWN} more")
    return "\n  ".join(lines)


def find_duplicates(
    train: pd.DataFrame,
    train_content: Sequence[str],
    test: Optional[pd.DataFrame],
    test_content: Sequence[Optional[str]],
) -> pd.DataFrame:
    """Byte-identical files under different rows: groups with at least one training file and two rows."""
    frames = [
        pd.DataFrame(
            {
                "set": "train",
                "row": np.arange(len(train)),
                "path": train["path"],
                "label": train["label"].astype("Int64"),
                "sha256": list(train_content),
            }
        )
    ]
    if test is not None:
        labels = test["label"].astype("Int64") if "label" in test.columns else pd.array([pd.NA] * len(test), "Int64")
        frames.append(
            pd.DataFrame(
                {
                    "set": "test",
                    "row": np.arange(len(test)),
                    "path": test["path"],
                    "label": labels,
                    "sha256": list(test_content),
                }
            )
        )
    rows = pd.concat(frames, ignore_index=True).dropna(subset=["sha256"])
    # Which files have a training copy, by factorized code: `isin` on strings loops in Python per value.
    codes, _ = pd.factorize(rows["sha256"])
    has_train = np.zeros(codes.max() + 1 if len(codes) else 0, dtype=bool)
    has_train[codes[(rows["set"] == "train").to_numpy()]] = True
    rows = rows[rows["sha256"].duplicated(keep=False).to_numpy() & has_train[codes]].copy()
    rows.insert(0, "copy_group", pd.factorize(rows["sha256"])[0])
    return rows.sort_values(["copy_group", "set", "row"], kind="stable")[DUPLICATE_COLUMNS].reset_index(drop=True)


def _warn_duplicates(dup: pd.DataFrame) -> None:
    """Leakage is not an error (copies are common in scraped sets) but must be visible.

    Counted per copy group with group reductions, not a frame per group: millions of rows hold many groups.
    """
    if dup.empty:
        return
    is_train = dup["set"] == "train"
    n_train = is_train.groupby(dup["copy_group"]).sum()
    n_test = (~is_train).groupby(dup["copy_group"]).sum()
    labels = dup[is_train].groupby("copy_group")["label"].nunique()

    def example(group: int) -> str:
        frame = dup[dup["copy_group"] == group]
        return " = ".join(f"{s} {p}" for s, p in zip(frame["set"], frame["path"]))

    in_train = n_train[n_train > 1]
    if len(in_train):
        conflicting = labels.reindex(in_train.index)
        conflicting = conflicting[conflicting > 1]
        log.warning(
            "%d training files have byte-identical copies under other names (%d group(s), e.g. %s); each "
            "group is kept in one fold (listed in duplicates.csv)%s",
            int(in_train.sum()),
            len(in_train),
            example(in_train.index[0]),
            f"; {len(conflicting)} group(s) carry both labels, check them (e.g. {example(conflicting.index[0])})"
            if len(conflicting)
            else "",
        )
    crossing = n_test[n_test > 0]
    if len(crossing):
        log.warning(
            "%d test images are byte-identical to training images (e.g. %s): test scores on them are not "
            "a fair estimate (listed in duplicates.csv)",
            int(crossing.sum()),
            example(crossing.index[0]),
        )
