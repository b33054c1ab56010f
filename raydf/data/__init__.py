"""The data path: catalog of images, the pre-flight checks, decoding and the decoded cache, folds, transforms,
the fold's Dataset, and the built-in demo set. Plain Python/PyTorch, no Ray."""
