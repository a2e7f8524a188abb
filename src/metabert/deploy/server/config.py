"""The server's limits (``ServerConfig``) and who may call it (loopback, API keys)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from metabert.data import DEFAULT_MAX_LENGTH


@dataclass(frozen=True)
class ServerConfig:
    max_items: int = 64  # per request
    max_batch: int = 32  # per model call
    max_wait_ms: float = 5.0
    max_seq_length: int = DEFAULT_MAX_LENGTH
    max_chars: int = 20_000  # per text, checked before tokenising
    max_queue: int = 256  # items waiting for the model; a request that does not fit gets 503
    request_timeout_s: float = 30.0  # from arrival to answer; later: 504
    max_body_bytes: int = 8 * 1024 * 1024  # larger bodies get 413 before they are parsed
    retry_after_s: int = 1  # the Retry-After of a 503
    protect_probes: bool = False  # /healthz and /metrics need the API key too (when there is one)

    def __post_init__(self):
        for name in ("max_items", "max_batch", "max_seq_length", "max_chars", "max_queue", "max_body_bytes",
                     "retry_after_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServerConfig.{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.max_wait_ms <= 60_000:
            raise ValueError(f"ServerConfig.max_wait_ms must be in [0, 60000], got {self.max_wait_ms}")
        if not 0 < self.request_timeout_s <= 3600:
            raise ValueError(f"ServerConfig.request_timeout_s must be in (0, 3600], got {self.request_timeout_s}")
        if self.max_queue < self.max_items:
            raise ValueError(f"ServerConfig.max_queue ({self.max_queue}) must be at least max_items "
                             f"({self.max_items}), or a full-size request could never be queued")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def read_api_key(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        key = f.read().strip()
    if len(key) < 16 or any(c.isspace() for c in key):
        raise ValueError(f"{path}: an API key file holds one key of at least 16 characters without spaces")
    return key


