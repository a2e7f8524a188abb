"""Evaluation and calibration: the score of every exit and of early exit (``evaluate``), typed
reports, plots, choosing γ (``calibrate``) with risk control (``risk``), checking the promise on
resampled splits (``validate``), and each policy's curve (``curves``)."""
