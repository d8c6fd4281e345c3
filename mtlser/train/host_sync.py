"""Reading a training step's results on the host: per step, or deferred (``train.defer_host_sync``).

A GPU runs a step's kernels while the host queues the next ones; every read of a GPU value on
the host (``.item()``, ``bool(tensor)``, ``.tolist()``, a boolean-mask selection) makes the host
wait until the queue has drained. A step of the paper's model reads about ten such values: the
losses and accuracy for the log, the CTC's usable utterances, the finite-loss check. Deferred,
they stay on the device: the statistics are summed there (in float64, the same arithmetic as the
host's float sums, so the epoch means are the same numbers) and read in one transfer every
``train.log_interval`` steps and at the end of the epoch; a non-finite loss is recorded with its
step and reported at the next read. What is left per step is inside torch's CTC loss on CUDA,
which copies the length tensors to the host (tests/test_speed.py counts the rest on CPU).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlser.utils import MtlserError


def nonfinite_loss_error(value: float, step: int, utts: list[str]) -> MtlserError:
    return MtlserError(f"non-finite loss {value} at step {step} (utterances {utts[:4]}...); lower optim.lr or "
                       "check the data")


class LossCheck:
    """The finite-loss check of every step, done at once (``deferred=False``) or at the next :meth:`read`."""

    def __init__(self, deferred: bool):
        self.deferred = deferred
        self._first_bad: Tensor | None = None  # 0-d: the first step whose loss was not finite, or -1
        self._bad_value: Tensor | None = None
        self._utts: dict[int, list[str]] = {}  # steps since the last read -> their utterances

    def check(self, loss: Tensor, step: int, utts: list[str]) -> None:
        if not self.deferred:
            if not torch.isfinite(loss):
                raise nonfinite_loss_error(loss.item(), step, utts)
            return
        loss = loss.detach()
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._bad_value = torch.zeros((), dtype=loss.dtype, device=loss.device)
        new = torch.isfinite(loss).logical_not() & (self._first_bad < 0)
        self._first_bad = torch.where(new, torch.full_like(self._first_bad, step), self._first_bad)
        self._bad_value = torch.where(new, loss.to(self._bad_value.dtype), self._bad_value)
        self._utts[step] = utts

    def read(self, values: dict[str, float | Tensor]) -> dict[str, float]:
        """``values`` as Python floats, with one host transfer for all tensors among them and the check.

        Raises the non-finite-loss error recorded since the last read.
        """
        keys = [k for k, v in values.items() if isinstance(v, Tensor)]
        out = {k: float(v) for k, v in values.items() if not isinstance(v, Tensor)}
        if not keys and self._first_bad is None:
            return out
        parts = [values[k].detach().double().reshape(1) for k in keys]
        if self._first_bad is not None:
            parts += [self._first_bad.double().reshape(1), self._bad_value.double().reshape(1)]
        host = torch.cat(parts).tolist()  # the one sync
        out.update(zip(keys, host))
        if self._first_bad is not None:
            bad_step, bad_value = int(host[-2]), host[-1]
            if bad_step >= 0:
                raise nonfinite_loss_error(bad_value, bad_step, self._utts.get(bad_step, []))
            self._utts.clear()
        return {k: out[k] for k in values}


def accumulate(sums: dict[str, float | Tensor], stats: dict[str, float | Tensor], batch_size: int) -> None:
    """Add a step's statistics to the epoch's sums in place (weighted by the batch size; CTC skips counted).

    A batch size of 0 (a rank's stand-in shard under torchrun) adds the keys, not the values."""
    for k, v in stats.items():
        w = batch_size if k != "ctc_skipped" else min(batch_size, 1)
        if isinstance(v, Tensor):
            v = v.detach().double()  # float64 on the device: the host's float arithmetic, same order
        sums[k] = sums.get(k, 0.0) + v * w
