"""`megarl train` with NaN multiplied into the actor's loss from a given step on (0-based, env
MEGARL_TEST_NAN_FROM_STEP), as a diverging run produces one: exercises the non-finite update guard
through the real trainer, with the loss patched from outside (no test hook in megarl)."""

import os
import sys

from megarl.cli import main
from megarl.train import algorithms
from megarl.train.trainer import Trainer

NAN_FROM_STEP = int(os.environ["MEGARL_TEST_NAN_FROM_STEP"])
_current = {"step": 0}
_real_update, _real_actor_loss = Trainer.update, algorithms.actor_loss


def _update(self, seqs, extra):
    _current["step"] = self.step
    return _real_update(self, seqs, extra)


def _actor_loss(*args, **kwargs):
    loss, stats = _real_actor_loss(*args, **kwargs)
    if _current["step"] >= NAN_FROM_STEP:
        loss = loss * float("nan")
    return loss, stats


Trainer.update = _update
algorithms.actor_loss = _actor_loss

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
