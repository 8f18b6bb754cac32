"""`megarl train` with NaN multiplied into the actor's loss from a given step on (0-based, env
MEGARL_TEST_NAN_FROM_STEP), as a diverging run produces one: exercises the non-finite update guard
through the real trainer, with the loss patched from outside (no test hook in megarl)."""

import os
import sys

from megarl.algorithms import losses
from megarl.cli import main
from megarl.train.stages import update

NAN_FROM_STEP = int(os.environ["MEGARL_TEST_NAN_FROM_STEP"])
_current = {"step": 0}
_real_apply, _real_actor_loss = update.apply, losses.actor_loss


def _apply(*args, step, **kwargs):
    _current["step"] = step
    return _real_apply(*args, step=step, **kwargs)


def _actor_loss(*args, **kwargs):
    loss, stats = _real_actor_loss(*args, **kwargs)
    if _current["step"] >= NAN_FROM_STEP:
        loss = loss * float("nan")
    return loss, stats


update.apply = _apply
losses.actor_loss = _actor_loss

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
