"""The seed notebook's way of running, as a baseline: folds one after another, every JPEG decoded and
resized again in every epoch, the full albumentations pipeline per image, and K separate inference passes.

Hyperparameters and sizes come from the same raydf config, so only the execution strategy differs.
`python -m benchmarks.seed_style --config ... key=value ...` (same arguments as raydf.train).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torch_optimizer
from albumentations.pytorch import ToTensorV2
from sklearn.model_selection import KFold
from torch.utils.data import DataLoader, Dataset

from raydf.config import load_config
from raydf.data.catalog import read_test, read_train
from raydf.data.transforms import SEED_NOISE_STD
from raydf.models.factory import build_model

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def seed_transforms(resize: int, crop: int) -> tuple[A.Compose, A.Compose]:
    train = A.Compose(
        [
            A.Resize(resize, resize),
            A.ImageCompression(quality_range=(60, 100), p=0.5),
            A.GaussNoise(std_range=SEED_NOISE_STD, p=0.1),
            A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.8, 0.8), p=0.05),
            A.HorizontalFlip(),
            A.OneOf([A.RandomBrightnessContrast(), A.FancyPCA(), A.HueSaturationValue()], p=0.7),
            A.ToGray(p=0.2),
            A.Affine(
                translate_percent=(-0.1, 0.1),
                scale=(0.8, 1.2),
                rotate=(-10, 10),
                keep_ratio=True,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=0.5,
            ),
            A.CenterCrop(crop, crop),
            A.Normalize(mean=MEAN, std=STD),
            ToTensorV2(),
        ]
    )
    val = A.Compose([A.Resize(resize, resize), A.CenterCrop(crop, crop), A.Normalize(mean=MEAN, std=STD), ToTensorV2()])
    return train, val


class SeedDataset(Dataset):
    """Reads the JPEG from disk on every access, as the notebook did (its imread flag kept images BGR)."""

    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = list(paths), list(labels), transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        img = cv2.imread(self.paths[i], cv2.COLOR_BGR2RGB)
        return self.transform(image=img)["image"], self.labels[i]


def run(cfg, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.train.seed)
    t_start = time.time()
    table = read_train(cfg.data.train, cfg.data.train_root)
    test = read_test(cfg.data.test, cfg.data.test_root) if cfg.data.test else None
    train_tf, val_tf = seed_transforms(cfg.data.resize, cfg.data.crop)
    kfold = KFold(n_splits=cfg.train.folds, shuffle=True, random_state=cfg.train.seed)
    best_models, fold_seconds = [], []
    for tr, va in kfold.split(table):
        t0 = time.time()
        train_loader = DataLoader(
            SeedDataset(table.path[tr], table.label[tr], train_tf), cfg.train.batch_size, shuffle=True, drop_last=True
        )
        val_loader = DataLoader(SeedDataset(table.path[va], table.label[va], val_tf), cfg.train.eval_batch_size)
        model = build_model(cfg.model.dropout, cfg.model.name)
        opt = torch_optimizer.RAdam(
            model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay
        )
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.sched.t_max)
        best_loss, stale, best = np.inf, 0, None
        for _ in range(cfg.train.epochs):
            model.train()
            for x, y in train_loader:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            losses, n = 0.0, 0
            with torch.no_grad():
                for x, y in val_loader:
                    losses += F.cross_entropy(model(x), y, reduction="sum").item()
                    n += len(y)
            sched.step()
            if losses / n < best_loss:
                best_loss, stale, best = losses / n, 0, copy.deepcopy(model.state_dict())
            else:
                stale += 1
                if stale >= cfg.train.patience:
                    break
        model.load_state_dict(best)
        best_models.append(model.eval())
        fold_seconds.append(time.time() - t0)
    inference_seconds = 0.0
    if test is not None:
        t0 = time.time()
        probs = k_separate_passes(best_models, test["path"].tolist(), val_tf, cfg.predict.batch_size)
        inference_seconds = time.time() - t0
        pd.DataFrame({"image": test["image"], "prob_fake": probs}).to_csv("/dev/null", index=False)
    return {"wall_seconds": time.time() - t_start, "fold_seconds": fold_seconds, "inference_seconds": inference_seconds}


def k_separate_passes(models, paths, transform, batch_size) -> np.ndarray:
    """The notebook's inference: one pass over the test files per fold model, then the mean softmax."""
    loader = DataLoader(SeedDataset(paths, [0] * len(paths), transform), batch_size)
    per_fold = []
    for model in models:
        with torch.no_grad():
            per_fold.append(torch.cat([torch.softmax(model(x), 1)[:, 1] for x, _ in loader]).numpy())
    return np.mean(per_fold, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    print(json.dumps(run(load_config(args.config, args.overrides), args.threads)))


if __name__ == "__main__":
    main()
