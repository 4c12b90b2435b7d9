"""Engine: training, evaluation, checkpoints and distributed set-up."""
