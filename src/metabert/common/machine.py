"""The machine a figure was measured on, in one line for results and docs (no paths, no host name)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model


INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")  # what INT8 speed depends on


def cpu_flags() -> list[str]:
    """The instruction sets among ``INT8_FLAGS`` that this CPU has (from /proc/cpuinfo)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                found = set(line.split(":", 1)[1].split())
                return [f for f in INT8_FLAGS if f in found]
    except OSError:
        pass
    return []


def hardware() -> str:
    """CPU model and the instruction sets INT8 speed depends on, core count, torch version and
    threads, Python version."""
    flags = cpu_flags()
    return (f"{cpu_model()}{' (' + ', '.join(flags) + ')' if flags else ''}, {os.cpu_count()} cores, torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}")


def hardware_summary() -> str:
    """``<cores>-core <CPU model>, <GPU or no GPU>``."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core {cpu_model()}, {gpu}"
