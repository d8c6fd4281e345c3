"""Training one fold: epochs of L = CE + lambda * CTC, validation, checkpoints.

Trainer state (model, optimizer, scheduler, sampler position, every RNG, epoch,
history, best score) is one ``checkpoint.pt`` written atomically after every
epoch and read with ``torch.load(weights_only=True)``. A rerun resumes from it
and ends bit-identical to an uninterrupted run (tested). The best model by the
validation metric (valid speakers only; never the test speaker) is kept as
``best.safetensors``, or, with ``train.model_selection last`` (the paper's
protocol: no valid set), the model after the last epoch; ``best.json`` says which
epoch that is and how it was chosen. With ``model.yaml``, ``config.yaml`` and
``token_list`` the experiment dir is a self-contained model for :mod:`mtlser.infer`.

Experiment dir::

    config.yaml        resolved config (every field)
    env.json           versions, git commit and GPU of the training run
    model.yaml         backbone arch + architecture arguments, emotions (the fold's inventory), vocab
    token_list         CTC tokens (index = line - 1), <blank> first
    checkpoint.pt      trainer state after the last finished epoch
    best.safetensors   model weights of the reported epoch (best on valid, or the last one)
    best.json          the reported epoch and how it was chosen
    epochN.safetensors the model after epoch N (train.keep_epoch_checkpoints)
    history.tsv        per-epoch train/valid statistics and fusion weights
    train.log          the log; train_curves.png the curves (redrawn every epoch)
    tensorboard/       per-epoch TensorBoard scalars (train.tensorboard)
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import math
import random
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader
from mtlser import expdir
from mtlser.config import Config, save_config, to_dict
from mtlser.data.dataset import batch_to, collate
from mtlser.model.backbone import conv_layers_as_lists
from mtlser.model.lengths import receptive_field
from mtlser.model.ser_model import SERModel
from mtlser.score.metrics import confusion_matrix, unweighted_accuracy, weighted_accuracy
from mtlser.text.tokenize import write_token_list
from mtlser.train import distributed, resume
from mtlser.train.build import (build_data, build_optimisation, build_samplers, build_seeded_model, dist_info,
                                drop_short_utterances, freeze_feature_encoder, resolve_precision, setup_device,
                                wrap_ddp)
from mtlser.train.curves import TensorBoardLog, plot_curves
from mtlser.train.host_sync import LossCheck, accumulate
from mtlser.utils import MtlserError
from mtlser.utils.fileio import atomic_save, atomic_save_safetensors, atomic_write_text
from mtlser.utils.progress import progress

logger = logging.getLogger(__name__)

CHECKPOINT = expdir.CHECKPOINT
BEST = expdir.BEST_WEIGHTS


def capture_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_pos": random.getstate()[2]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    # RNG states are CPU byte tensors, also in a checkpoint loaded onto a GPU.
    torch.set_rng_state(state["torch"].cpu())
    random.setstate((3, tuple(int(x) for x in state["python"]), state["python_pos"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class TrainerCallback:
    """Supported ways for tests and benchmarks to watch or steer a run, instead of patching a live trainer.

    Override what you need; each method is called with the trainer. ``before_step`` may return a
    changed batch (e.g. to inject a fault); ``after_step`` sees the step's statistics.
    """

    def on_epoch_start(self, trainer: "Trainer") -> None:
        pass

    def before_step(self, trainer: "Trainer", batch: dict) -> dict:
        return batch

    def after_step(self, trainer: "Trainer", stats: dict) -> None:
        pass

    def after_checkpoint(self, trainer: "Trainer") -> None:
        pass


def has_unclassed(*sets) -> bool:
    """Whether any utterance of these datasets has no class (utt2emo '-'): the CE term then masks them."""
    from mtlser.data.emotions import NO_CLASS_INDEX

    return any(e == NO_CLASS_INDEX for ds in sets if ds is not None for e in ds.emotions)


class Trainer:
    """One fold's training, assembled from the builders of :mod:`mtlser.train.build` (in their order:
    the seed is set right before the model is built, so reordering changes the weights)."""

    def __init__(self, cfg: Config, data_dir: str | Path, token_list: list[str], exp_dir: str | Path,
                 callbacks: list[TrainerCallback] | None = None):
        self.cfg = cfg
        self.data_dir = Path(data_dir)
        self.exp_dir = Path(exp_dir)
        self.token_list = token_list
        self.callbacks = list(callbacks or [])
        self.dist = dist_info()
        self.device = setup_device(cfg, self.dist)
        # data, then the model seeded from train.seed, then what depends on both
        self.train_set, self.valid_set = build_data(cfg, self.data_dir, token_list)
        self.model: SERModel = build_seeded_model(cfg, len(token_list), self.device, self.dist,
                                                  attributes=self.train_set.attributes)
        self.model.class_masking = has_unclassed(self.train_set, self.valid_set)
        self.loss_check = LossCheck(deferred=cfg.train.defer_host_sync)
        drop_short_utterances(self.model.backbone.min_samples(), {"train": self.train_set, "valid": self.valid_set},
                              self.data_dir, cfg.data.sample_rate)
        self.sampler, self.valid_sampler = build_samplers(cfg, self.train_set, self.valid_set, self.dist)
        self._make_loaders()
        self.precision = resolve_precision(cfg.train.precision, self.device)
        if cfg.backbone.freeze_feature_encoder:
            freeze_feature_encoder(self.model)
            if cfg.data.cache_cnn_features:
                self._attach_cnn_cache()
        if cfg.train.compile != "none":
            from mtlser.train.compile import compile_backbone

            compile_backbone(self.model.backbone, cfg.train.compile, cfg.train.compile_scope, cfg.train.compile_dynamic)
        self.ddp_model = wrap_ddp(cfg, self.model, self.device, self.dist)
        self.optimizer, self.scheduler, self.scaler = build_optimisation(
            cfg, self.model, len(self.sampler.epoch_batches(0)), self.precision, self.device)

        self.epoch = 0  # epochs finished
        self.step = 0
        self.history: list[dict] = []
        self.best: dict | None = None
        self.finished = False

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": capture_rng(),
            "epoch": self.epoch,
            "step": self.step,
            "history": json.dumps(self.history),
            "best": json.dumps(self.best),
            "finished": self.finished,
            # What produced this state, compared on resume (mtlser.train.resume).
            "config": json.dumps(to_dict(self.cfg)),
            "token_list": json.dumps(self.token_list),
            "data": resume.data_fingerprint(self.train_set, self.valid_set),
        }

    def load_state_dict(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            why = str(e).splitlines()[-1].strip()[:200]
            raise resume.ResumeRefused(f"{self.exp_dir / CHECKPOINT}: its model does not fit this config ({why}); "
                                       "train with --force or another --tag") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        restore_rng(state["rng"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.history = json.loads(state["history"])
        self.best = json.loads(state["best"])
        self.finished = bool(state["finished"])

    def save_checkpoint(self) -> None:
        # Every rank's RNG state (each rank draws its own dropout); every rank takes part in the gather.
        rng_ranks = distributed.gather_rng_states(capture_rng()) if self.dist.world_size > 1 else None
        if not self.dist.is_main:
            return
        state = self.state_dict()
        if rng_ranks is not None:
            state["rng_ranks"] = rng_ranks
        with atomic_save(self.exp_dir / CHECKPOINT, self._intact()) as f:
            torch.save(state, f)

    def _intact(self, best: bool = False) -> str:
        """What survives a failed write of this epoch's files, for the error message."""
        path = self.exp_dir / CHECKPOINT
        if not path.is_file():
            return "no checkpoint of this fold was written yet; free space and rerun"
        return (f"the previous checkpoint {path}{' and best model' if best else ''} "
                f"{'are' if best else 'is'} intact: free space (or raise the limit) and rerun to resume from it")

    def try_resume(self) -> bool:
        path = self.exp_dir / CHECKPOINT
        if not path.is_file():
            return False
        state = resume.read_checkpoint(path, self.device)
        changed = self.check_resume(state, path)
        self.load_state_dict(state)
        if self.dist.world_size > 1:
            ranks = state.get("rng_ranks")
            if ranks is not None and len(ranks) == self.dist.world_size:
                restore_rng(ranks[self.dist.rank])
            else:
                logger.warning("%s was written by %d process(es), this run has %d: each rank continues with "
                               "fresh random numbers, so the run will differ from an uninterrupted one", path,
                               len(ranks) if ranks else 1, self.dist.world_size)
                torch.manual_seed(distributed.rank_seed(self.cfg.train.seed + self.epoch, self.dist.rank))
        logger.info("resumed from %s after epoch %d (step %d)", path, self.epoch, self.step)
        if changed:
            logger.info("settings changed since the checkpoint, which may change on resume: %s",
                        resume.describe_resumable(changed))
        self.finished = finished_under(self.cfg, self.epoch, self.finished, self.best)
        return True

    def check_resume(self, state: dict, path: Path) -> list:
        """Refuse to resume a checkpoint trained with other settings (mtlser.train.resume); return the changes
        that may happen on resume. Nothing is written before this check."""
        return check_resume(self.cfg, self.token_list, self.train_set, self.valid_set, self.data_dir, state, path)

    # ------------------------------------------------------------------ setup files
    def write_model_files(self) -> None:
        if not self.dist.is_main:
            return
        write_setup_files(self.cfg, self.token_list, self.exp_dir, self.device)
        info = {
            "arch": self.model.backbone.arch,
            "arch_kwargs": conv_layers_as_lists(self.model.backbone.arch_kwargs),
            "emotions": list(self.cfg.data.emotions),
            "vocab_size": len(self.token_list),
            "num_hidden_states": self.model.backbone.num_layers + 1,
        }
        if self.train_set.attributes:  # only then: a model without attributes keeps the paper's model.yaml
            from mtlser.data.attributes import declaration_to_yaml
            info["attributes"] = declaration_to_yaml(self.train_set.attributes)
        atomic_write_text(self.exp_dir / expdir.MODEL_YAML, yaml.safe_dump(info, sort_keys=False))

    # ------------------------------------------------------------------ loop
    def autocast(self):
        """The context of every forward pass: autocast (train.precision) and the attention kernel choice."""
        stack = contextlib.ExitStack()
        if self.precision != "fp32":
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            stack.enter_context(torch.autocast(device_type=self.device.type, dtype=dtype))
        if self.device.type == "cuda" and self.cfg.train.sdpa_backend != "default":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            first = {"efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH,
                     "flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
            # The chosen kernel first, the math kernel where it refuses the inputs.
            stack.enter_context(sdpa_kernel([first[self.cfg.train.sdpa_backend], SDPBackend.MATH], set_priority=True))
        return stack

    def _make_loaders(self, frames_of=None) -> None:
        cfg = self.cfg
        collate_fn = functools.partial(collate, pad_ladder=cfg.data.pad_ladder, frames_of=frames_of)
        pin = self.device.type == "cuda"
        # Workers (data.num_workers) read and collate ahead while the step runs. Not persistent: a new
        # iterator each epoch draws its seed from torch's RNG as the single-process loader does, so
        # training (dropout draws included) is the same with and without workers, and resumes as well.
        self.train_loader = DataLoader(self.train_set, batch_sampler=self.sampler, collate_fn=collate_fn,
                                       num_workers=cfg.data.num_workers, pin_memory=pin)
        self.valid_loader = (DataLoader(self.valid_set, batch_sampler=self.valid_sampler, collate_fn=collate_fn,
                                        num_workers=cfg.data.num_workers, pin_memory=pin)
                             if self.valid_set is not None else None)

    def _attach_cnn_cache(self) -> None:
        """Frozen CNN: serve its output from the feature cache (built here for missing utterances)."""
        from mtlser.data.cnn_cache import build_cache

        cfg = self.cfg
        if cfg.data.max_duration > 0:
            raise MtlserError("data.max_duration cuts waveforms at random, which cached CNN features cannot follow; "
                              "set data.max_duration 0 or data.cache_cnn_features false")
        backbone = self.model.backbone
        if not backbone.padding_invariant_cnn and backbone.arch_kwargs.get("extractor_mode") == "group_norm":
            logger.warning("cached CNN features are computed per utterance; with backbone.padding_invariant_cnn "
                           "false the uncached CNN would normalise over the padded batch instead")
        datasets = [ds for ds in (self.train_set, self.valid_set) if ds is not None]
        utts = [(u, w) for ds in datasets for u, w in zip(ds.utts, ds.wavs)]
        cache_dir = cfg.data.cnn_cache_dir or self.exp_dir.parent / "cnn_cache"
        cache = build_cache(backbone, utts, cache_dir, self.device, cfg.data.sample_rate)
        for ds in datasets:
            ds.features = cache
        self._make_loaders(frames_of=cache.frames_of)  # batches padded to the uncached path's frame counts
        logger.info("frozen CNN: training on cached features from %s", cache.root)

    def _set_backbone_frozen(self, frozen: bool) -> None:
        if self.model.backbone.frozen:
            return  # backbone.freeze (probing): frozen for good, never thawed after freeze_steps
        for name, p in self.model.backbone.named_parameters():
            if self.cfg.backbone.freeze_feature_encoder and "feature_extractor" in name:
                continue
            p.requires_grad_(not frozen)

    def train_epoch(self) -> dict:
        cfg = self.cfg
        self.model.train()
        self.sampler.set_epoch(self.epoch)
        for cb in self.callbacks:
            cb.on_epoch_start(self)
        sums: dict[str, float] = {}
        n = 0
        t0 = time.time()
        audio_s = 0.0
        if self.dist.is_main:
            # One plain line per epoch start: the launcher's per-fold bar and ETA follow these (no tqdm in logs).
            logger.info("epoch %d/%d: %d batches", self.epoch + 1, cfg.train.epochs, len(self.sampler))
        # Under torchrun: (this rank's utterances, the whole batch's) per step, from the resume position on.
        shares = self.sampler.shard_sizes(self.epoch)[self.sampler.batches_done:] if self.dist.world_size > 1 else []
        bar = progress(self.train_loader, desc=f"epoch {self.epoch + 1}/{cfg.train.epochs}", unit="batch",
                       disable=not self.dist.is_main or not sys.stderr.isatty(), leave=False, mininterval=5)
        for i, batch in enumerate(bar):
            stats, bs = self.train_step(batch, shares[i] if shares else None)
            accumulate(sums, stats, bs)  # a stand-in shard (bs 0) adds the keys, not the values
            n += bs
            audio_s += float(batch["num_samples"].sum()) / cfg.data.sample_rate if bs else 0.0
            if self.step % cfg.train.log_interval == 0 and self.dist.is_main:
                stats = self.loss_check.read(stats)  # with train.defer_host_sync the one read of the interval
                logger.info("epoch %d step %d: %s", self.epoch + 1, self.step,
                            " ".join(f"{k}={v:.4g}" for k, v in stats.items()))
        sums = self.loss_check.read(sums)  # with train.defer_host_sync the epoch's one read
        if self.dist.world_size > 1:  # statistics of the whole batches: summed over the ranks
            keys = sorted(sums)
            *values, n, audio_s = distributed.all_reduce_sum([sums[k] for k in keys] + [n, audio_s], self.device)
            sums = dict(zip(keys, values))
        out = {k: (v / max(n, 1) if k != "ctc_skipped" else v) for k, v in sums.items()}
        out["time_s"] = time.time() - t0
        out["audio_s_per_s"] = audio_s / max(out["time_s"], 1e-9)
        return out

    def model_inputs(self, batch: dict) -> dict:
        """The model's keyword arguments for a collated batch (audio, or cached CNN features)."""
        if "feats" in batch:
            inputs, lens, from_features = batch["feats"], batch["feat_lens"], True
        else:
            inputs, lens, from_features = batch["wavs"], batch["wav_lens"], False
        kw = dict(wavs=inputs, wav_lens=lens, emotions=batch["emotions"], targets=batch["targets"],
                  target_lens=batch["target_lens"], from_features=from_features)
        if "attributes" in batch:
            kw["attributes"] = batch["attributes"]
        return kw

    def train_step(self, batch: dict, share: tuple[int, int] | None = None) -> tuple[dict, int]:
        """One optimizer step of L = CE + lambda * CTC on a collated batch; returns (stats, batch size).

        Under torchrun ``share`` is (this rank's utterances, the whole batch's): the rank's loss is
        weighted so that the ranks' average gradient is the whole batch's (mtlser.train.distributed).
        """
        cfg = self.cfg
        for cb in self.callbacks:
            batch = cb.before_step(self, batch)
        weights = {}
        if share is not None:
            weights["term_weights"] = distributed.term_weights(*share, self.dist.world_size, cfg.loss.ctc_reduction)
        if self.step <= cfg.backbone.freeze_steps and cfg.backbone.freeze_steps > 0:
            # Frozen for the first freeze_steps steps, thawed at step freeze_steps (also after a resume).
            self._set_backbone_frozen(self.step < cfg.backbone.freeze_steps)
        batch = batch_to(batch, self.device)
        with self.autocast():
            loss, stats, bs = self.ddp_model(**self.model_inputs(batch), **weights)
        self.loss_check.check(loss, self.step, batch["utts"])  # at once, or at the next read (defer_host_sync)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        if share is not None:
            stats, bs = distributed.whole_batch_stats(stats, weights["term_weights"], cfg.loss.lambda_), share[0]
        for cb in self.callbacks:
            cb.after_step(self, stats)
        return stats, bs

    @torch.no_grad()
    def validate(self) -> dict:
        """Objective (and its CE and CTC parts), WA and UA on the fold's valid set (training speakers only), and
        with an attribute head the mean over the attributes of their CCC (``ccc``).

        Empty without a valid set (train.model_selection last: nothing is selected).
        """
        if self.valid_loader is None:
            return {}
        self.model.eval()
        refs, hyps = [], []
        sums = {"loss": 0.0, "loss_ce": 0.0, "loss_ctc": 0.0}
        n = 0
        head = self.model.attr_head
        # Per attribute: the sums of x, y, x², y², xy (x predicted on the declared scale as inference gives it,
        # y the reference), from which the valid CCC follows, also summed over ranks.
        attr_sums = torch.zeros(5, len(head.low), dtype=torch.float64) if head is not None else None
        if head is not None:
            sums["loss_attr"] = 0.0
        for batch in self.valid_loader:
            batch = batch_to(batch, self.device)
            with self.autocast():
                loss, stats, emo_logits = self.model.loss_and_logits(**self.model_inputs(batch))
            bs = len(batch["utts"])
            sums["loss"] += float(loss) * bs
            for k in ("loss_ce", "loss_ctc", "loss_attr"):  # float(): 0-d device tensors (train.defer_host_sync)
                if k in sums:
                    sums[k] += float(stats.get(k, 0.0)) * bs
            n += bs
            if attr_sums is not None:
                x = head.to_scale(self.model.attr_unit().double()).cpu()
                y = batch["attributes"].double().cpu()
                attr_sums += torch.stack([x.sum(0), y.sum(0), (x * x).sum(0), (y * y).sum(0), (x * y).sum(0)])
            if emo_logits is not None:
                refs.extend(batch["emotions"].tolist())
                hyps.extend(emo_logits.argmax(-1).tolist())
        self.model.train()
        # Utterances with no class (NO_CLASS_INDEX) are in the loss's attribute term only, not in WA/UA.
        classed = [(r, h) for r, h in zip(refs, hyps) if r >= 0]
        cm = confusion_matrix([r for r, _ in classed], [h for _, h in classed], len(self.cfg.data.emotions))
        if self.dist.world_size > 1:  # each rank validated its share of the batches
            keys = sorted(sums)
            *values, n = distributed.all_reduce_sum([sums[k] for k in keys] + [n], self.device)
            sums = dict(zip(keys, values))
            cm = distributed.all_reduce_counts(cm, self.device)
            if attr_sums is not None:
                flat = distributed.all_reduce_sum(attr_sums.flatten().tolist(), self.device)
                attr_sums = torch.tensor(flat, dtype=torch.float64).view_as(attr_sums)
        # A term the model does not have is no column: no CTC loss without a CTC head, no CE without classes.
        out = {k: v / max(n, 1) for k, v in sums.items()
               if (k != "loss_ctc" or self.model.ctc_head is not None)
               and (k != "loss_ce" or self.model.emotion_head is not None)}
        if attr_sums is not None:  # only then: a model without attributes keeps its history columns
            from mtlser.score.attributes import ccc_from_sums

            out["ccc"] = sum(ccc_from_sums(n, *attr_sums[:, k].tolist()) for k in range(attr_sums.shape[1])) / \
                attr_sums.shape[1]
        if self.model.emotion_head is None:  # a dimensional-only model: no WA, no UA
            return out
        return {**out, "wa": weighted_accuracy(cm), "ua": unweighted_accuracy(cm)}

    def is_better(self, valid: dict) -> bool:
        if self.cfg.train.model_selection == "last":
            return True  # the paper's protocol: the newest epoch is the reported one
        metric = self.cfg.train.select_metric
        if self.best is None:
            return True
        if metric == "loss":
            return valid["loss"] < self.best["loss"]
        if valid[metric] != self.best[metric]:
            return valid[metric] > self.best[metric]
        return valid["loss"] < self.best["loss"]  # tie: lower loss wins

    def reported(self, valid: dict) -> dict:
        """best.json's record of the epoch just finished as the reported one: its number, how it was chosen."""
        if self.cfg.train.model_selection == "last":
            return {"epoch": self.epoch, "selection": "last",
                    "chosen": "the model after the last epoch (train.model_selection last: no valid set, nothing "
                              "selected; the paper's protocol for the folds)"}
        metric = self.cfg.train.select_metric
        return {"epoch": self.epoch, **valid, "selection": "valid", "metric": metric,
                "chosen": f"the best valid {metric.upper()} so far (valid set: training speakers only)"}

    def _save_weights(self, name: str) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        atomic_save_safetensors(self.exp_dir / name, state, {"epoch": str(self.epoch)}, self._intact(best=True))

    def save_best(self) -> None:
        """best.safetensors and best.json, together, whenever the reported epoch changes."""
        if not self.dist.is_main:
            return
        self._save_weights(BEST)
        atomic_write_text(self.exp_dir / expdir.BEST_JSON, json.dumps(self.best, indent=1) + "\n")

    def save_epoch_weights(self) -> None:
        """epochN.safetensors after every epoch (train.keep_epoch_checkpoints): loadable as best.safetensors is."""
        if self.dist.is_main and self.cfg.train.keep_epoch_checkpoints:
            self._save_weights(f"epoch{self.epoch}.safetensors")

    def write_history(self) -> None:
        if self.dist.is_main:
            write_history(self.exp_dir, self.history)

    def write_curves(self) -> None:
        """train_curves.png after every epoch: titled with experiment and fold, the reported epoch marked."""
        if not self.dist.is_main or not self.history:
            return
        cfg = self.cfg
        how = "last epoch" if cfg.train.model_selection == "last" else f"best valid {cfg.train.select_metric.upper()}"
        title = (f"{self.exp_dir.parent.name} / {self.exp_dir.name}: λ = {cfg.loss.lambda_:g}"
                 + (f" (CTC {cfg.loss.ctc_reduction})" if cfg.loss.lambda_ > 0 else "")
                 + f", epoch {self.epoch} of {cfg.train.epochs}")
        plot_curves(self.history, self.exp_dir / "train_curves.png", title,
                    int(self.best["epoch"]) if self.best else None, how)

    def end_epoch(self, train_stats: dict, valid: dict) -> tuple[dict, bool]:
        """The history record of the epoch just trained and whether it becomes the reported one (then saved);
        sets ``finished`` when the last epoch is done or early stopping (train.patience) ends the run."""
        cfg = self.cfg
        record = {"epoch": self.epoch, "step": self.step}
        record.update({f"train_{k}": v for k, v in train_stats.items()})
        record.update({f"valid_{k}": v for k, v in valid.items()})
        if self.model.fusion is not None:
            w = self.model.fusion.weights.detach().cpu().tolist()
            record["fusion_weights"] = " ".join(f"{x:.4f}" for x in w)
        self.history.append(record)
        improved = self.is_better(valid)
        if improved:
            self.best = self.reported(valid)
            self.save_best()
        self.save_epoch_weights()
        since_best = self.epoch - int(self.best["epoch"])
        if cfg.train.patience > 0 and since_best >= cfg.train.patience:
            logger.info("no improvement of valid %s for %d epochs: stopping early", cfg.train.select_metric,
                        since_best)
            self.finished = True
        if self.epoch >= cfg.train.epochs:
            self.finished = True
        return record, improved

    def log_epoch(self, train_stats: dict, valid: dict, improved: bool) -> None:
        if not self.dist.is_main:
            return
        logger.info(
            "epoch %d: train loss %.4f (%s%s) %.0f audio-s/s | %s%s",
            self.epoch, train_stats.get("loss", math.nan),
            f"ce {train_stats['loss_ce']:.4f}" if "loss_ce" in train_stats else f"attr {train_stats['loss_attr']:.4f}",
            f", ctc {train_stats['loss_ctc']:.4f}, {int(train_stats.get('ctc_skipped', 0))} ctc-skipped"
            if "loss_ctc" in train_stats else "",
            train_stats["audio_s_per_s"],
            f"valid loss {valid['loss']:.4f}" + (f" WA {valid['wa']:.4f} UA {valid['ua']:.4f}" if "ua" in valid else "")
            + (f" CCC {valid['ccc']:.4f}" if "ccc" in valid else "")
            if valid else "no valid set", " (best)" if improved and valid else "")

    def stop_requested(self) -> bool:
        """train.stop_after_epoch: end this run, unfinished, once that many epochs are trained (as a
        preemption would after its checkpoint); a rerun without it resumes from the checkpoint."""
        stop = self.cfg.train.stop_after_epoch
        if stop <= 0 or self.epoch < stop:
            return False
        logger.info("train.stop_after_epoch %d: stopping after epoch %d of %d, unfinished; rerun without it "
                    "to resume", stop, self.epoch, self.cfg.train.epochs)
        return True

    def fit(self) -> dict:
        cfg = self.cfg
        self.try_resume()  # before writing anything: it refuses a checkpoint trained with other settings
        self.write_model_files()
        if self.finished or self.epoch >= cfg.train.epochs:
            logger.info("%s: training already finished (%d epochs); nothing to do", self.exp_dir, self.epoch)
            # history.tsv is how later stages tell a finished fold (mtlser.expdir.read_training): a run killed
            # between the last checkpoint and its history row leaves it one row short until rewritten here.
            self.write_history()
            return self.best or {}
        if self.stop_requested():
            return self.best or {}
        logger.info("train: %d utterances (%.1f min), valid: %s; %d batches/epoch, padding %.1f%%; device %s, %s",
                    len(self.train_set), sum(self.train_set.durations) / 60,
                    len(self.valid_set) if self.valid_set is not None else "none (the last epoch is reported)",
                    len(self.sampler.epoch_batches(0)),
                    100 * self.sampler.padding_share(0, cfg.data.pad_ladder, cfg.data.sample_rate), self.device,
                    self.precision)
        if self.dist.world_size > 1:
            import torch.distributed as tdist

            logger.info("torchrun: %d processes, each takes a 1/%d share of every batch of %d (DDP, %s)",
                        self.dist.world_size, self.dist.world_size, cfg.data.batch_size, tdist.get_backend())
        n_params = sum(p.numel() for p in self.model.parameters())
        logger.info("model: %.2fM parameters, %d hidden states fused (%s), lambda=%g",
                    n_params / 1e6, self.model.backbone.num_layers + 1, cfg.model.fusion, cfg.loss.lambda_)
        board = TensorBoardLog(self.exp_dir / "tensorboard", self.epoch + 1) \
            if self.dist.is_main and cfg.train.tensorboard else None
        try:
            while not self.finished and self.epoch < cfg.train.epochs:
                train_stats = self.train_epoch()  # L = CE + lambda * CTC, one optimizer step per batch
                self.epoch += 1
                valid = self.validate()
                record, improved = self.end_epoch(train_stats, valid)
                self.save_checkpoint()
                for cb in self.callbacks:
                    cb.after_checkpoint(self)
                self.write_history()
                self.write_curves()
                if board is not None:
                    board.epoch(record, {g["name"]: g["lr"] for g in self.optimizer.param_groups})
                self.log_epoch(train_stats, valid, improved)
                if not self.finished and self.stop_requested():
                    break
        finally:
            if board is not None:
                board.close()
        return self.best or {}


# ---------------------------------------------------------------------- shared with a finished fold's rerun
def check_resume(cfg: Config, token_list: list[str], train_set, valid_set, data_dir: Path, state: dict,
                 path: Path) -> list:
    """Refuse to resume the checkpoint ``state`` (read from ``path``) when it was trained with other settings,
    another token list or other data (mtlser.train.resume); return the changes that may happen on resume."""
    exp_dir = path.parent
    recorded = json.loads(state["config"]) if "config" in state else None
    if not isinstance(recorded, dict):
        logger.warning("%s: no record of the settings it was trained with; resuming unchecked", path)
        return []
    changed = resume.check_resume(recorded, to_dict(cfg), to_dict(Config()), checkpoint=path,
                                  epochs_done=int(state["epoch"]), scheduler=cfg.scheduler.name)
    if "token_list" in state and json.loads(state["token_list"]) != list(token_list):
        raise resume.ResumeRefused(f"{exp_dir}: trained with another CTC token list than this run's "
                          f"({len(json.loads(state['token_list']))} vs {len(token_list)} tokens); run it as a "
                          "new experiment (./run.sh --tag NEW_NAME) or retrain with --force")
    if "data" in state and state["data"] != resume.data_fingerprint(train_set, valid_set):
        raise resume.ResumeRefused(f"{exp_dir}: trained on other utterances, labels or CTC targets than "
                          f"{data_dir}/{{train,valid}} hold now (stages 0-2 were rerun differently?); run it "
                          "as a new experiment (./run.sh --tag NEW_NAME) or retrain with --force")
    return changed


def finished_under(cfg: Config, epoch: int, finished: bool, best: dict | None) -> bool:
    """Whether a checkpoint after ``epoch`` epochs (``finished`` as it recorded) is finished under this run's
    settings: it was under those it was trained with, maybe not under this run's (more epochs, patience)."""
    since_best = epoch - int(best["epoch"]) if best else 0
    return epoch >= cfg.train.epochs or (finished and cfg.train.patience > 0 and since_best >= cfg.train.patience)


def write_setup_files(cfg: Config, token_list: list[str], exp_dir: Path, device: torch.device) -> None:
    """config.yaml, token_list and env.json of a fold dir (rank 0)."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, exp_dir / expdir.CONFIG_YAML)
    write_token_list(exp_dir / expdir.TOKEN_LIST, token_list)
    # The versions and GPU this fold trains with, for RESULTS.md (scoring may run on another machine).
    expdir.write_environment(exp_dir, device)


def write_history(exp_dir: Path, history: list[dict]) -> None:
    """history.tsv, one row per epoch trained (rank 0)."""
    if not history:
        return
    keys = list(history[0].keys())
    lines = ["\t".join(keys)]
    for h in history:
        lines.append("\t".join(f"{h[k]:.6g}" if isinstance(h.get(k), float) else str(h.get(k, "")) for k in keys))
    atomic_write_text(exp_dir / expdir.HISTORY_TSV, "\n".join(lines) + "\n")


def rerun_of_finished(cfg: Config, data_dir: str | Path, token_list: list[str], exp_dir: str | Path) -> dict | None:
    """The rerun of a fold whose checkpoint finished under this run's settings, without building the model and
    the optimizer: it needs neither, nor the pretrained backbone (backbone.init) it started from. It checks and
    writes what Trainer.fit does on such a fold: refuses other settings, another token list or other data;
    rewrites config.yaml, token_list, env.json and history.tsv; keeps model.yaml, which the model wrote under
    the same settings. Returns fit's result (best.json's record, {} without one), or None where Trainer decides:
    no checkpoint, epochs to go, or no model.yaml naming the CNN (the utterances too short for it are left out
    of the data the checkpoint's fingerprint was taken of)."""
    data_dir, exp_dir = Path(data_dir), Path(exp_dir)
    path = exp_dir / CHECKPOINT
    info = expdir.read_model_info(exp_dir) if path.is_file() else None
    conv = ((info or {}).get("arch_kwargs") or {}).get("extractor_conv_layer_config")
    if not conv:
        return None
    # Memory-mapped: of the trainer state, only the record of the run is read here.
    state = resume.read_checkpoint(path, "cpu", mmap=True)
    epoch, best = int(state["epoch"]), json.loads(state["best"])
    if not finished_under(cfg, epoch, bool(state["finished"]), best):
        return None
    cfg = copy.deepcopy(cfg)  # build_data resolves fields in it; Trainer (--force) starts from the config given
    dist = dist_info()
    device = setup_device(cfg, dist)
    train_set, valid_set = build_data(cfg, data_dir, token_list)
    drop_short_utterances(receptive_field([(kernel, stride) for _channels, kernel, stride in conv]),
                          {"train": train_set, "valid": valid_set}, data_dir, cfg.data.sample_rate)
    changed = check_resume(cfg, token_list, train_set, valid_set, data_dir, state, path)
    if changed:
        logger.info("settings changed since the checkpoint, which may change on resume: %s",
                    resume.describe_resumable(changed))
    if dist.is_main:
        write_setup_files(cfg, token_list, exp_dir, device)
        # history.tsv is how later stages tell a finished fold (mtlser.expdir.read_training): a run killed
        # between the last checkpoint and its history row leaves it one row short until rewritten here.
        write_history(exp_dir, json.loads(state["history"]))
    logger.info("%s: training already finished (%d epochs); nothing to do", exp_dir, epoch)
    return best or {}
