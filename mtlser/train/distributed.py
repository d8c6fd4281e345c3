"""Training one fold on several processes (torchrun, DDP): what the ranks share and how.

    torchrun --standalone --nproc_per_node 2 -m mtlser.train --config ... --fold 1 ...

``data.batch_size`` stays the global batch: every batch of the single-process run is split over
the ranks (:class:`mtlser.data.dataset.BatchSampler`, ``distribute="shard"``), and each rank's
loss is its shard's share of the whole batch's objective (:func:`term_weights`), so that DDP's
gradient average is the gradient of the single-process batch: same steps, same learning-rate
schedule, same λ. Training statistics and validation metrics are summed over the ranks
(:func:`all_reduce_sum`), so every rank takes the same model-selection and early-stopping
decisions; rank 0 writes every file. Each rank draws its own random numbers (dropout), and the
checkpoint keeps every rank's RNG state (:func:`gather_rng_states`), so that a resumed run
continues each rank's stream.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch


def rank() -> int:
    """This process's rank under torchrun (RANK); 0 in a plain run."""
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


@contextlib.contextmanager
def process_group(device: str):
    """Under torchrun, the ranks' process group for the block (nccl on GPUs, gloo on CPU); nothing otherwise.

    A block that ends normally ends on every rank together: the ranks meet at a barrier (rank 0 has
    written its last file) before the group is destroyed. After that, leave the process with
    :func:`exit_now`, not through the interpreter's shutdown (see there).
    """
    if world_size() == 1:
        yield
        return
    import torch.distributed as dist

    dist.init_process_group(backend="nccl" if device != "cpu" and torch.cuda.is_available() else "gloo")
    try:
        yield
        dist.barrier()
    finally:
        # On an error too: another rank may wait in a collective, but torchrun stops it once this one exits.
        dist.destroy_process_group()


def exit_now(code: int) -> None:
    """End a torchrun rank with ``code`` once its process group is destroyed, skipping the interpreter's shutdown.

    destroy_process_group leaves gloo's C++ threads running (torch 2.11: its worker and transport
    threads outlive the group, also after every Python reference is gone), and a Python shutdown
    with them alive aborts the rank at random ("terminate called without an active exception",
    exit -6: issue 18's resumed torchrun runs, 1 run in 10-20 on 2 cores). Every file is written and
    closed by then; the logs and standard streams are flushed here. A plain run returns normally.
    """
    if world_size() == 1:
        return
    import logging
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def barrier() -> None:
    """Every rank waits here for the others (no-op in a plain run)."""
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


def term_weights(n_local: int, n_global: int, world_size: int, ctc_reduction: str) -> tuple[float, float]:
    """Multipliers of a rank's (CE, CTC) terms so that the ranks' mean is the whole batch's loss.

    CE is a mean over the shard: weight n_local / n_global * world_size. A summed CTC
    (``ctc_reduction: sum``): weight world_size. The per-utterance CTC means (mean,
    mean_batch) are weighted like CE, which is exact when the shards skip equally many
    utterances (too short for their targets). A stand-in shard (n_local = 0) weighs nothing.
    """
    if n_local == 0:
        return 0.0, 0.0
    share = n_local / n_global * world_size
    return share, float(world_size) if ctc_reduction == "sum" else share


def whole_batch_stats(stats: dict[str, float], weights: tuple[float, float], ctc_weight: float) -> dict[str, float]:
    """A rank's step statistics in the whole batch's units, to be averaged over utterances like one process's.

    Means over the shard's utterances (CE, accuracy, a per-utterance CTC) already are. A summed
    CTC is the shard's sum: scaled to what the whole batch's sum contributes per utterance.
    """
    w_ce, w_ctc = weights
    if w_ce == 0 or "loss_ctc" not in stats or w_ctc == w_ce:
        return stats
    out = dict(stats)
    out["loss_ctc"] = stats["loss_ctc"] * w_ctc / w_ce
    out["loss"] = stats["loss_ce"] + ctc_weight * out["loss_ctc"]
    return out


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over the ranks (float64; every rank passes the same number of values)."""
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def all_reduce_counts(counts: np.ndarray, device: torch.device) -> np.ndarray:
    """A count array (e.g. a confusion matrix) summed over the ranks."""
    summed = all_reduce_sum(np.asarray(counts, dtype=np.float64).ravel().tolist(), device)
    return np.rint(summed).astype(counts.dtype).reshape(counts.shape)


def gather_rng_states(state: dict) -> list[dict]:
    """Every rank's RNG state (``capture_rng``), in rank order, on every rank."""
    import torch.distributed as dist

    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, state)
    return out


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s random numbers (dropout) after the model is built alike on every rank."""
    return seed * 1000003 + rank
