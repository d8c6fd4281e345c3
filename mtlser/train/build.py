"""The parts a :class:`mtlser.train.trainer.Trainer` is assembled from, one builder per job.

    setup_device          the process: device, CPU threads, kernel choices (torchrun's rank)
    build_data            the fold's train (and valid) sets, valid merged into train for model_selection last
    build_seeded_model    the model, built from train.seed alike on every rank, then each rank's own stream
    drop_short_utterances utterances the CNN gives no frame for: skipped, named in the log
    build_samplers        batches: the global batch split over the ranks; valid batches dealt out
    freeze_feature_encoder, wrap_ddp   what trains and how gradients are shared
    build_optimisation    optimizer (backbone and heads groups), learning-rate schedule, gradient scaler

Each builder reads the config and returns what it built; the trainer calls them in a fixed order,
which is part of the result: the seed is set right before the model is built, so the initial
weights and every random draw after it are those of any earlier run with the same config.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from mtlser.config import Config
from mtlser.data.dataset import BatchSampler, SERDataset
from mtlser.model.ser_model import SERModel, build_model
from mtlser.train import distributed
from mtlser.utils import MtlserError, require_gpu_for

logger = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; a plain run is rank 0 of 1."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def select_device(name: str, dist: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        require_gpu_for(name, "--train.device")
        if name == "cuda":
            name = f"cuda:{dist.local_rank}"
    return torch.device(name)


def setup_device(cfg: Config, dist: DistInfo) -> torch.device:
    """This process's device, with its CPU threads and kernel choices set."""
    device = select_device(cfg.train.device, dist)
    if device.type == "cuda" and dist.world_size > 1:
        torch.cuda.set_device(device)  # NCCL's object collectives use the current device
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """train.precision "auto": bf16 on GPUs that support it, fp32 elsewhere (CPU autocast is slow)."""
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def resolve_emotions(cfg: Config, data_dirs: list[Path]) -> list[str]:
    """The fold's emotion inventory, checked against data.emotions (when set) and loss.class_weights."""
    from mtlser.data.emotions import check_same, inventory_of

    emotions, where = inventory_of([d for d in data_dirs if d.is_dir()])
    if cfg.data.emotions is not None:
        check_same(cfg.data.emotions, "the config's data.emotions", emotions, where,
                   "set data.emotions to null (= the data's) or to the data's list in its order; or change the "
                   "inventory at stage 0 and rerun stages 0-2")
    if cfg.loss.class_weights is not None and len(cfg.loss.class_weights) != len(emotions):
        raise MtlserError(f"loss.class_weights has {len(cfg.loss.class_weights)} values for the {len(emotions)} "
                          f"emotions of {where} ({' '.join(emotions)})")
    return emotions


def check_dimensional_only(cfg: Config, data_dir: Path, token_list: list[str]) -> None:
    """A fold with no classes (an empty inventory: every utt2emo is '-') trains attributes only: no emotion head,
    no CE term; CTC off or on untagged targets; the epoch chosen on the valid loss."""
    where = data_dir / "train" / "emotions"
    if not cfg.loss.attributes:
        raise MtlserError(f"{where}: no classes, so the model has attributes only: train with --loss.attributes true "
                          "(the data's utt2attr)")
    if cfg.loss.lambda_ > 0 and len(token_list) <= 1:
        raise MtlserError(f"{where}: no classes, so the emotion-tagged CTC targets are empty (token list of "
                          f"{len(token_list)} token): train with untagged targets (--emo-tag false: text_phncls_notag) "
                          "or without CTC (--loss.lambda 0)")
    if cfg.train.model_selection == "valid" and cfg.train.select_metric in ("ua", "wa"):
        raise MtlserError(f"{where}: no classes, so no valid {cfg.train.select_metric.upper()} to select the epoch "
                          "on: use --train.select_metric ccc or loss (or --train.model_selection last)")


def build_data(cfg: Config, data_dir: Path, token_list: list[str]) -> tuple[SERDataset, SERDataset | None]:
    """The fold's training set and its valid set (None without one, or merged into training for
    ``train.model_selection last``). Sets ``cfg.data.emotions`` to the data's inventory."""
    if not (data_dir / "train" / "wav.scp").is_file():
        raise MtlserError(f"{data_dir / 'train'}: missing; run stage 2 (fold splits) first")
    has_valid = (data_dir / "valid" / "wav.scp").is_file()
    if cfg.train.model_selection == "valid" and not has_valid:
        raise MtlserError(f"{data_dir / 'valid'}: missing, and train.model_selection valid picks the epoch "
                          "on it; run stage 2 with --valid share (or session-mate), or train as the paper "
                          "does with train.model_selection last")
    # The classes come from the data (stage 0's inventory); data.emotions may only restate them.
    cfg.data.emotions = resolve_emotions(cfg, [data_dir / "train", data_dir / "valid"])
    if not cfg.data.emotions:
        check_dimensional_only(cfg, data_dir, token_list)
    use_ctc = cfg.loss.lambda_ > 0
    ds_kw = dict(token_list=token_list if use_ctc else None, token_type=cfg.data.token_type,
                 emotions=cfg.data.emotions, sample_rate=cfg.data.sample_rate, cache_audio=cfg.data.cache_audio)
    if cfg.loss.attributes:
        from mtlser.data.attributes import read_declaration
        ds_kw["attributes"] = read_declaration(data_dir / "train")
    train_set = SERDataset(data_dir / "train", max_duration=cfg.data.max_duration, **ds_kw)
    train_set.training = True
    valid_set = SERDataset(data_dir / "valid", **ds_kw) if has_valid else None
    if cfg.train.model_selection == "last" and valid_set is not None:
        # The paper's protocol trains on all speech of the training speakers: stage 2's valid share too.
        logger.info("train.model_selection last: no model selection, so %s (%d utterances) trains as well",
                    data_dir / "valid", len(valid_set))
        train_set.extend(valid_set)
        valid_set = None
    if cfg.loss.class_weighting == "balanced":
        cfg.loss.class_weights = balanced_weights(cfg, train_set, data_dir / "train")
    return train_set, valid_set


def balanced_weights(cfg: Config, train_set: SERDataset, where: Path) -> list[float]:
    """loss.class_weighting balanced: CE weights from the training set's class counts (what trains, the valid
    share included under model_selection last). Weights already in the config must be these (a fold's saved
    config.yaml records them), so that no two weightings are silently mixed."""
    from mtlser.model.heads import balanced_class_weights

    counts = [0] * len(cfg.data.emotions)
    for e in train_set.emotions:
        if e >= 0:  # an utterance with no class (utt2emo '-') is not in the CE
            counts[e] += 1
    weights = balanced_class_weights(counts)
    given = cfg.loss.class_weights
    if given is not None and (len(given) != len(weights)
                              or any(abs(float(g) - w) > 1e-6 * max(1.0, w) for g, w in zip(given, weights))):
        raise MtlserError(f"loss.class_weights {given} and loss.class_weighting balanced ({weights} from the class "
                          f"counts of {where}) are both set; give one of them")
    logger.info("loss.class_weighting balanced: class counts %s of %s -> CE weights %s",
                dict(zip(cfg.data.emotions, counts)), where, [round(w, 4) for w in weights])
    return weights


def build_seeded_model(cfg: Config, vocab_size: int, device: torch.device, dist: DistInfo,
                       attributes: list | None = None) -> SERModel:
    """The model from train.seed (the same initial model on every rank), then each rank's own random stream.
    ``attributes``: the data's attribute declaration, for the attribute head (loss.attributes)."""
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    attrs = [(a.name, a.low, a.high) for a in attributes] if attributes else None
    model = build_model(cfg, vocab_size=vocab_size, attributes=attrs).to(device)
    if dist.world_size > 1:  # same initial model on every rank, then each rank's own dropout
        torch.manual_seed(distributed.rank_seed(cfg.train.seed, dist.rank))
        random.seed(distributed.rank_seed(cfg.train.seed, dist.rank))
    model.defer_sync = cfg.train.defer_host_sync
    return model


def drop_short_utterances(min_samples: int, sets: dict[str, SERDataset | None], data_dir: Path,
                          sample_rate: int) -> None:
    """Utterances shorter than the CNN's receptive field (``min_samples``: the model's
    ``backbone.min_samples()``) give no frame at all: a logged, counted skip."""
    min_s = min_samples / sample_rate
    for name, ds in sets.items():
        if ds is None:
            continue
        dropped = ds.drop_shorter_than(min_s)
        if dropped:
            logger.warning("%s: skipped %d utterances shorter than %.3f s (the CNN's receptive field: no frame): "
                           "%s", data_dir / name, len(dropped), min_s, " ".join(dropped))
        if len(ds) == 0:
            raise MtlserError(f"{data_dir / name}: no utterance of at least {min_s:.3f} s")


def build_samplers(cfg: Config, train_set: SERDataset, valid_set: SERDataset | None,
                   dist: DistInfo) -> tuple[BatchSampler, BatchSampler | None]:
    """Training batches (each global batch split over the ranks) and valid batches (whole, dealt out)."""
    sampler = BatchSampler(train_set.durations, cfg.data.batch_size, cfg.data.batching, cfg.data.bucket_window,
                           shuffle=True, seed=cfg.train.seed, rank=dist.rank, world_size=dist.world_size,
                           distribute="shard")
    valid_sampler = (BatchSampler(valid_set.durations, cfg.data.batch_size, shuffle=False, rank=dist.rank,
                                  world_size=dist.world_size, distribute="round_robin")
                     if valid_set is not None else None)
    return sampler, valid_sampler


def freeze_feature_encoder(model: SERModel) -> None:
    for p in model.backbone.feature_extractor.parameters():
        p.requires_grad_(False)


def wrap_ddp(cfg: Config, model: SERModel, device: torch.device, dist: DistInfo) -> torch.nn.Module:
    """The module the training step calls: the model itself, or under torchrun its DDP wrapper."""
    if dist.world_size == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=cfg.backbone.freeze_steps > 0)


def lr_lambda(name: str, warmup: int, total: int):
    def f(step: int) -> float:
        if name == "constant":
            return 1.0
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if name == "warmup_constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - warmup))  # warmup_linear

    return f


def build_optimisation(cfg: Config, model: SERModel, steps_per_epoch: int, precision: str,
                       device: torch.device) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR,
                                                      torch.amp.GradScaler]:
    """Optimizer with two groups (backbone at lr * backbone.lr_scale, heads at lr), its schedule over
    train.epochs * steps_per_epoch steps, and the gradient scaler (active for fp16 only)."""
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    head_params = [p for p in model.parameters() if id(p) not in backbone_ids and p.requires_grad]
    groups = [
        {"params": backbone_params, "lr": cfg.optim.lr * cfg.backbone.lr_scale, "name": "backbone"},
        {"params": head_params, "lr": cfg.optim.lr, "name": "heads"},
    ]
    opt_cls = torch.optim.AdamW if cfg.optim.name == "adamw" else torch.optim.Adam
    optimizer = opt_cls(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                        weight_decay=cfg.optim.weight_decay)
    total_steps = cfg.train.epochs * max(1, steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.scheduler.name, cfg.scheduler.warmup_steps, total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    return optimizer, scheduler, scaler
