"""Which model of a run a file, task, event or row belongs to: its fold and its seed (`train.seeds`).

A run trains K folds x S seeds. Every model is named by one `ModelKey` everywhere: the fold task, its state files,
its checkpoint, its progress events and history rows, the summary and the models inference loads. A run of one seed
keeps the names it always had (`checkpoints/fold{k}.pt`, rows without a seed column); a run of several seeds names
each model by both (`checkpoints/s{seed}_fold{k}.pt`, rows with a `seed` column).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from raydf.config import Config
from raydf.errors import ConfigError


@dataclass(frozen=True)
class ModelKey:
    """Fold `fold` trained with the randomness of seed `seed`; `several_seeds`: the run has more than one seed,
    so names carry the seed."""

    fold: int
    seed: int
    several_seeds: bool = False

    @property
    def name(self) -> str:
        """The file stem of the model's checkpoint and state: `fold3`, or `s7_fold3` in a run of several seeds."""
        return f"s{self.seed}_fold{self.fold}" if self.several_seeds else f"fold{self.fold}"

    @property
    def label(self) -> str:
        """How messages and progress lines name it: `fold 3`, or `seed 7 fold 3`."""
        return f"seed {self.seed} fold {self.fold}" if self.several_seeds else f"fold {self.fold}"

    @property
    def rng_seed(self) -> int:
        """What the model's initial weights, augmentation, dropout and loader order are drawn from. seed + fold, as
        a single-seed run has always drawn them (so the models of seed s are those of a run with train.seed=s); the
        models of one fold differ in every seed, since its training rows are the same."""
        return self.seed + self.fold

    def tags(self) -> dict[str, int]:
        """The fields rows, events and metadata carry for this model: `fold`, and `seed` when the run has several."""
        return {"fold": self.fold, "seed": self.seed} if self.several_seeds else {"fold": self.fold}

    @classmethod
    def of(cls, record: Mapping[str, Any], seed: int = 0) -> ModelKey:
        """The key a row, event or checkpoint's metadata carries (see `tags`); `seed` for one without a seed."""
        if record.get("seed") is None:
            return cls(int(record["fold"]), seed)
        return cls(int(record["fold"]), int(record["seed"]), True)


def run_seeds(cfg: Config) -> list[int]:
    """The seeds the run trains every fold with: `train.seeds`, or `[train.seed]` when it is not set."""
    return list(cfg.train.seeds) if cfg.train.seeds else [cfg.train.seed]


def model_keys(cfg: Config, folds: Optional[Sequence[int]] = None) -> list[ModelKey]:
    """Every model of the run (of `folds`, default all), seed by seed: Ray starts tasks in about the order they
    are submitted, so when the cluster cannot run them all at once the first seed's ensemble is complete first."""
    seeds = run_seeds(cfg)
    folds = range(cfg.train.folds) if folds is None else folds
    return [ModelKey(k, s, len(seeds) > 1) for s in seeds for k in folds]


def as_key(fold: int | ModelKey, cfg: Config) -> ModelKey:
    """`fold` as a key: a bare fold index is that fold of the run's first seed (a single-seed run, a Tune trial)."""
    if isinstance(fold, ModelKey):
        return fold
    return ModelKey(int(fold), run_seeds(cfg)[0])


def model_name(fold: int | ModelKey) -> str:
    """The file stem of a model given by its key, or by a bare fold index (`fold{k}`, a single-seed run's)."""
    return fold.name if isinstance(fold, ModelKey) else f"fold{fold}"


def check_one_seed(cfg: Config) -> None:
    """raydf.tune's trials train one seed each (there is no tune.seeds): several `train.seeds` are refused."""
    seeds = run_seeds(cfg)
    if len(seeds) > 1:
        listed = ",".join(map(str, seeds))
        raise ConfigError(
            f"train.seeds={seeds}: raydf.tune trials train one seed each (train.seed={cfg.train.seed}); drop "
            f"train.seeds for the sweep, then train the seeds with its best config: python -m raydf.train "
            f"--config RUN_DIR/best.yaml 'train.seeds=[{listed}]'"
        )
