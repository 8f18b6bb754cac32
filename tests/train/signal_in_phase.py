"""`megarl train` that sends itself SIGUSR1 (Slurm's notice before the time limit) inside one phase of
a step, for test_stop_between_phases.py. MEGARL_TEST_SIGNAL_IN=grade:N sends it during the N-th
grading call of the rollout (one call per sampling round), update:N during the N-th optimizer step of
the actor. Every call of either is appended to $MEGARL_TEST_PHASE_LOG ("grade" or "update", one line
each), so a test sees which phases ran after the signal."""

import os
import signal
import sys

from megarl import cli
from megarl.train import workers
from megarl.train.stages import reward


def _count_and_signal(phase: str, function):
    where, at = os.environ["MEGARL_TEST_SIGNAL_IN"].split(":")

    def wrapper(*args, **kwargs):
        with open(os.environ["MEGARL_TEST_PHASE_LOG"], "a") as log:
            log.write(phase + "\n")
        with open(os.environ["MEGARL_TEST_PHASE_LOG"]) as log:
            calls = log.read().split().count(phase)
        if where == phase and calls == int(at):
            os.kill(os.getpid(), signal.SIGUSR1)
        return function(*args, **kwargs)

    return wrapper


reward.grade = _count_and_signal("grade", reward.grade)
_plain_train_step = workers.ModelWorker.train_step
_counted_train_step = _count_and_signal("update", _plain_train_step)


def _train_step(self, *args, **kwargs):
    return (_counted_train_step if self.settings.role == "actor" else _plain_train_step)(self, *args, **kwargs)


workers.ModelWorker.train_step = _train_step

if __name__ == "__main__":
    sys.exit(cli.main(["train", *sys.argv[1:]]))
