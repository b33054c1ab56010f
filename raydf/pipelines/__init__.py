"""The orchestrators of a command: a training run, a prediction, a sweep. Above the Ray layer
(`raydf.distributed`), below the command lines."""
