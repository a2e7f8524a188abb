"""Training: the options of a run (``config.TrainConfig``), the loop (``trainer``) and its callbacks,
data-parallel helpers (``distributed``) and the training methods (``methods``, one registry)."""
