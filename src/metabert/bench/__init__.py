"""Speed measurement: batch-1 latency and batch-B throughput of every runner, full and early
(``timing``), the whole measurement of a checkpoint as one call (``run.bench``), the figures derived
from it (``report``), where batch-1 time goes (``profile``), and each exit policy's score against
layer and measured speed-up (``curves``)."""
