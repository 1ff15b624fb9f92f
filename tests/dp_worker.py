"""Run by tests/test_distributed.py under torchrun: the real command line (``minigrpo train ...``),
then every rank saves its final policy weights to $DP_WEIGHTS_DIR/rank{R}.pt so that the test
can check, from outside, that the ranks ended with identical weights."""

import os
import sys
from pathlib import Path

import torch

from minigrpo.cli import main
from minigrpo.trainer import RLTrainer

_train = RLTrainer.train


def train_and_save_weights(self):
    summary = _train(self)
    torch.save(self.policy.state_dict(), Path(os.environ["DP_WEIGHTS_DIR"]) / f"rank{self.dist.rank}.pt")
    return summary


RLTrainer.train = train_and_save_weights
sys.exit(main(sys.argv[1:]))
