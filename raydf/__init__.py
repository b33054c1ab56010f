"""raydf: fold-parallel K-fold training of real/fake face classifiers on Ray, with a soft-vote ensemble."""

__version__ = "0.1.0"
