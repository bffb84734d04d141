"""The training engine and the run configuration: one epoch, evaluation, checkpoints, fold ensembles."""
