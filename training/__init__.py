"""Training, evaluation and benchmarking of the adaptive models on GLUE."""
