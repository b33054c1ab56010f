"""A run's directory and outputs: storage (local or URI), run directory set-up, resume, run log, submission,
report and plots, live console progress, TensorBoard, sweep tables. No Ray."""
