"""Evaluation and calibration: the score of every exit and of early exit (``evaluate``), typed
reports (``reports``) and plots (``plots``), choosing γ (``calibrate``) with risk control
(``risk``), and checking the promise on resampled splits (``validate``)."""
