"""A few checks on the real all-MiniLM-L6-v2 weights and real GLUE data."""

import random

import torch

from metabert.data.batching import encode, iterate, train_batches
from metabert.data.tasks import load_glue, subsample
from metabert.training.methods import get_method
from metabert.model.multi_exit import MultiExitBert


def test_minilm_joint_training_lowers_the_loss_on_sst2(glue_dir):
    torch.manual_seed(0)
    data = subsample(load_glue("sst2", "train", str(glue_dir)), 256, seed=0)
    model = MultiExitBert.from_backbone("minilm-l6", ["0", "1"], seed=0)
    assert model.num_layers == 6
    enc = encode(data, model.tokenizer, 64)
    batches = train_batches(enc, 32, random.Random(0))
    fixed = next(iterate(enc, batches[:1], model.tokenizer.pad_token_id))
    method = get_method("joint")

    def held_loss():
        model.eval()
        with torch.no_grad():
            return method.loss(model, fixed, 0).item()

    before = held_loss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for _ in range(2):  # two passes over the 256 examples: 16 steps
        for batch in iterate(enc, batches, model.tokenizer.pad_token_id):
            loss = method.loss(model, batch, 0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    after = held_loss()
    assert after < before - 0.3, (before, after)
