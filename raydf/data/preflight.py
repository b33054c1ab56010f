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

import logging
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from raydf.data.catalog import check_two_classes
from raydf.data.images import check_images, decode_checked
from raydf.errors import DataError

log = logging.getLogger(__name__)

BAD_COLUMNS = ["set", "row", "path", "reason"]  # bad_inputs.csv; row: 0-based position in the set as read
DUPLICATE_COLUMNS = ["copy_group", "set", "row", "path", "label", "sha256"]  # duplicates.csv
_SHOWN = 10  # bad files named in a message


@dataclass
class CheckedInputs:
    """What training may use, and what was left out and why."""

    train: pd.DataFrame  # the usable training rows, in their order (RangeIndex)
    images: np.ndarray  # (len(train), size, size, 3) uint8: the decoded training set, shared by every fold
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


def preflight(
    train: pd.DataFrame, test: Optional[pd.DataFrame], size: int, threads: int = 0, on_bad: str = "skip"
) -> CheckedInputs:
    """Decode the training set (at `size` px) and check the test set; apply the `on_bad` policy.

    Raises:
        DataError: with `on_bad="error"`, when any image is unreadable (naming the first ones); with
            `skip`, when what is left cannot be trained on (one class) or no test image is readable.
    """
    t0 = time.time()
    decoded = decode_checked(train["path"].tolist(), size, threads)
    test_bad, test_content = check_images(test["path"].tolist(), threads) if test is not None else ({}, [])
    bad = _bad_table(train, decoded.reasons, test, test_bad)
    n_test = 0 if test is None else len(test)
    found = (
        f"{len(bad)} unreadable ({len(decoded.reasons)} training, {len(test_bad)} test)" if len(bad) else "all readable"
    )
    log.info(
        "pre-flight: checked %d training and %d test images in %.1fs: %s", len(train), n_test, time.time() - t0, found
    )
    if len(bad) and on_bad == "error":
        raise DataError(
            f"{len(bad)} of {len(train) + n_test} images cannot be read (data.on_bad=error):\n  "
            f"{_list_bad(bad)}\nFix or remove them, or set data.on_bad=skip to train without them "
            "(they are then listed in RUN_DIR/bad_inputs.csv)"
        )
    usable = train[decoded.usable].reset_index(drop=True)
    content = [h for h in decoded.sha256 if h is not None]
    if decoded.reasons:
        check_two_classes(usable, f"the training set without its {len(decoded.reasons)} unreadable images")
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
        train=usable, images=decoded.images, content=content, test_bad=test_bad, bad=bad, duplicates=duplicates
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
    """Leakage is not an error (copies are common in scraped sets) but must be visible."""
    if dup.empty:
        return
    groups = list(dup.groupby("copy_group"))

    def example(frame: pd.DataFrame) -> str:
        return " = ".join(f"{s} {p}" for s, p in zip(frame["set"], frame["path"]))

    in_train = [g for _, g in groups if (g["set"] == "train").sum() > 1]
    if in_train:
        conflicting = [g for g in in_train if g[g["set"] == "train"]["label"].nunique() > 1]
        log.warning(
            "%d training files have byte-identical copies under other names (%d group(s), e.g. %s); each "
            "group is kept in one fold (listed in duplicates.csv)%s",
            sum(int((g["set"] == "train").sum()) for g in in_train),
            len(in_train),
            example(in_train[0]),
            f"; {len(conflicting)} group(s) carry both labels, check them (e.g. {example(conflicting[0])})"
            if conflicting
            else "",
        )
    crossing = [g for _, g in groups if (g["set"] == "test").any()]
    if crossing:
        n = sum(int((g["set"] == "test").sum()) for g in crossing)
        log.warning(
            "%d test images are byte-identical to training images (e.g. %s): test scores on them are not "
            "a fair estimate (listed in duplicates.csv)",
            n,
            example(crossing[0]),
        )
