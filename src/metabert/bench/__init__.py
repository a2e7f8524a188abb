"""Speed measurement: batch-1 latency and batch-B throughput of every runner, full and early
(``timing``), and the figures derived from a run (``report``)."""
