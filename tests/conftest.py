import os
import time
from pathlib import Path

import pytest
import torch

from metabert.model.multi_exit import MultiExitBert

GLUE_DIR = os.environ.get("GLUE_DIR")


def make_tiny(labels=("neg", "pos"), seed: int = 0, train: bool = False, **options) -> MultiExitBert:
    """The one way tests build a model: the random 3-layer, hidden-32 BERT with MiniLM's tokenizer
    (``--model tiny``), ``labels`` as its classes, in eval mode unless ``train``. ``options`` go to
    ``MultiExitBert.from_backbone`` (pooling, dropout, backbone_dropout, head, ...)."""
    model = MultiExitBert.from_backbone("tiny", list(labels), seed=seed, **options)
    return model.train(train)


@pytest.fixture(scope="session")
def tiny_model() -> MultiExitBert:
    """The random 3-layer, hidden-32 model with MiniLM's tokenizer, 2 classes."""
    return make_tiny()


@pytest.fixture
def fresh_tiny() -> MultiExitBert:
    return make_tiny(("a", "b", "c"), seed=1, train=True)


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not GLUE_DIR or not Path(GLUE_DIR).is_dir():
        pytest.skip("GLUE_DIR is not set to the GLUE folder (CI sets it)")
    return Path(GLUE_DIR)


def sharpen(model: MultiExitBert, scale: float) -> MultiExitBert:
    """Scale every exit's final layer so exits range from unsure (small) to very sure (large)."""
    with torch.no_grad():
        for i, head in enumerate(model.exits):
            head.classifier.weight.mul_(scale * (i + 1))
    return model


def diversify(model: MultiExitBert, seed: int = 0, scale: float = 3.0) -> MultiExitBert:
    """Large random exit heads, so that a random backbone's exits disagree from sample to sample
    (exit policies need predictions that change across layers and samples)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in model.exits:
            for linear in (head.dense, head.classifier):
                linear.weight.copy_(torch.randn(linear.weight.shape, generator=gen) * scale)
    return model


def wait_until(condition, what: str, limit_s: float = 60.0) -> None:
    """Poll ``condition`` until it holds (a state to reach, not a time to measure)."""
    stop = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > stop:
            raise AssertionError(f"never reached: {what}")
        time.sleep(0.02)
