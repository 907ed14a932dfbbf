"""The system runner: the step loop, checkpoints and resume, validation, export and metrics."""
