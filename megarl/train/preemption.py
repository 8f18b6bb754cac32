"""Stopping a run between the phases of a step: the stop request (Slurm's SIGUSR1 before the time
limit, SIGTERM, or Ctrl-C), the error that ends a stopped run, and the progress of a step that a checkpoint
written mid-step carries so that the resumed run continues from the same phase."""

from __future__ import annotations

import dataclasses
import signal
from typing import TYPE_CHECKING

import torch

from megarl.runtime import collectives
from megarl.runtime.process import INTERRUPTED_EXIT_CODE

if TYPE_CHECKING:  # the stages import this module's neighbours; types only
    from megarl.train.stages.generate import RolloutBatch
    from megarl.train.stages.logprobs import SequenceTensors
    from megarl.train.stages.update import UpdateTotals


def _exit_now() -> None:
    """The second Ctrl-C: one line (first rank), then exit without unwinding."""
    import os

    if os.environ.get("RANK", "0") == "0":
        os.write(2, b"megarl: interrupted again: exiting now (checkpoints already written are kept)\n")
    os._exit(INTERRUPTED_EXIT_CODE)


class PreemptedError(Exception):
    """Training stopped on a signal after writing a checkpoint; a requeued job resumes from it."""


class StopRequest:
    """Set by a signal on any rank; the ranks agree on it at the phase boundaries of a step.

    Ctrl-C (SIGINT, which the terminal sends to every process of the group: launcher, ranks) asks
    like SIGTERM does; a second Ctrl-C ends the process at once. What is on disk stays whole: a
    checkpoint is only ever renamed into place complete, and metrics are appended line by line."""

    def __init__(self) -> None:
        self.asked = False
        self.interrupted = False  # asked by Ctrl-C

    def ask(self, signum=None, frame=None) -> None:
        if signum == signal.SIGINT:
            if self.interrupted:
                _exit_now()
            self.interrupted = True
        self.asked = True

    @classmethod
    def on_signals(cls, signals=(signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)) -> "StopRequest":
        """A request that these signals set (install in the main thread)."""
        stop = cls()
        for sig in signals:
            signal.signal(sig, stop.ask)
        return stop

    def agreed(self) -> bool:
        """True on every rank once any rank was asked (a collective: every rank calls it)."""
        flag = torch.tensor([(2.0 if self.interrupted else 1.0) if self.asked else 0.0])
        collectives.all_reduce(flag, op="max")
        if flag.item() == 2.0:  # Ctrl-C reached some rank: every rank reports it as an interrupt
            self.interrupted = True
        return bool(flag.item())


@dataclasses.dataclass
class StepProgress:
    """How far the current step got on this rank: its batch (driver), this rank's log-probs and
    advantages once computed, and the mini-batch updates done with their running totals."""

    batch: RolloutBatch | None = None
    tensors: list[SequenceTensors] | None = None  # this rank's shard
    updates_done: int = 0  # mini-batch updates of the step already applied
    totals: UpdateTotals | None = None

    def rank_state(self) -> dict:
        """What this rank's checkpoint shard keeps (the batch goes into the driver's trainer state)."""
        return {"tensors": None if self.tensors is None else [dataclasses.asdict(t) for t in self.tensors],
                "updates_done": self.updates_done,
                "totals": None if self.totals is None else dataclasses.asdict(self.totals)}

    @classmethod
    def restore(cls, batch: RolloutBatch | None, rank_state: dict) -> StepProgress:
        from megarl.train.stages.logprobs import SequenceTensors
        from megarl.train.stages.update import UpdateTotals

        tensors, totals = rank_state["tensors"], rank_state["totals"]
        return cls(batch=batch, tensors=None if tensors is None else [SequenceTensors(**t) for t in tensors],
                   updates_done=rank_state["updates_done"], totals=None if totals is None else UpdateTotals(**totals))
