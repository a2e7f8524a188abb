"""The machine a figure was measured on, in one line for results and docs (no paths, no host name)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def hardware() -> str:
    """CPU model, core count, torch version and threads, Python version."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")
