"""The networks: the factory that builds a classifier from the config. Plain PyTorch, no Ray."""
