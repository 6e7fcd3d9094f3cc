"""Run by tests/test_distributed.py under torchrun (not a test module): fit() in this rank, then this rank's
chosen weights and history saved for the test to compare. ARGS: DATA OUT REPORT_DIR CONFIG_JSON [CHECKPOINT_DIR]
With DDP_FIT_STOP_AFTER=k the run is stopped after k epochs, as a cancel stops it, and reports nothing.

With DDP_FIT_NORM=group the network's BatchNorm layers are GroupNorm(1, C): a network whose output for a film
does not depend on the other films of its batch, so a global batch split across ranks computes what it does in
one process, and the test can hold the two runs to a tight tolerance."""

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

from pneumo_core.errors import TrainingCancelled
from pneumo_core.model import train
from pneumo_core.model.config import TrainConfig


def _group_norm(net: nn.Module) -> nn.Module:
    for name, child in net.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(net, name, nn.GroupNorm(1, child.num_features))
        else:
            _group_norm(child)
    return net


if os.environ.get("DDP_FIT_NORM") == "group":
    _create = train.create_model
    train.create_model = lambda init, **kw: (lambda net, info: (_group_norm(net), info))(*_create(init, **kw))

data, out, report, config = sys.argv[1:5]
ckpt = sys.argv[5] if len(sys.argv) > 5 else None
stop_after = int(os.environ.get("DDP_FIT_STOP_AFTER", 0))      # stop (as a cancel does) after this many epochs
asked = []


def should_stop() -> bool:
    asked.append(1)
    return bool(stop_after) and len(asked) > stop_after


try:
    res = train.fit(data, out, TrainConfig(**json.loads(config)), checkpoint_dir=ckpt, should_stop=should_stop)
except TrainingCancelled:
    sys.exit(0)
torch.save({"selected": res.selected, "history": res.history, "card": res.card},
           Path(report) / f"rank{os.environ.get('RANK', '0')}.pt")
