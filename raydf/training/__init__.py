"""The fold's training loop and what it saves: engine (precision, steps), the epoch loop, its resumable state,
lock-step folds for sweeps, best-weights checkpoints, metrics. Plain PyTorch, no Ray."""
