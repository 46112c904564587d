"""The training loop: two-stage training, resumable checkpoints, validation, DDP via torchrun.

Data: each split is decoded once into uint8 tensors (on the GPU when training there) and every
batch is augmented on the training device (:mod:`enet_seg_ros.data.device_augment`): no step
decodes a file or runs per-sample Python image code. Steps run in bf16 autocast where the
hardware has bf16 units (CUDA; CPUs with AMX or AVX512-BF16), channels_last, optionally
``torch.compile``-d.

Reproducibility: every sample's augmentation is drawn from its own generator seeded by
(seed, stage, epoch, index[, pass]) on the host, so CPU and GPU runs draw the same parameters,
and the sampler is a ``DistributedSampler`` even for one process, so a run resumed from a
checkpoint, or split over N processes with the same global batch, sees the same batches. The
loss is normalised by the global (all-rank) weighted pixel count, so DDP gradients equal the
single-process gradients of the same global batch.

What still differs between N processes and one is what runs per process: BatchNorm batch
statistics (per-rank batches; SyncBatchNorm needs CUDA) and Dropout masks (per-process RNG).
``freeze_bn`` + ``no_dropout`` remove both, which is how the DDP equivalence test compares them.

Honest numbers (``select``): ``last`` (default) exports the last epoch of a fixed schedule;
``holdout`` picks the epoch with the best mean IoU on frames held out of train; ``val`` picks on
val (optimistic: the reported score then also chose the checkpoint). The exported model is
always scored on val, and the card's ``metrics.protocol`` says which of the three was used.
"""
from __future__ import annotations

import copy
import csv
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler

from ..data.datasets import SegmentationDataset, build_dataset
from ..data.device_augment import BatchAugment, FrameStore
from ..engine.cpu import cpu_has_bf16
from ..engine.preprocess import Preprocess
from ..evaluate.metrics import ConfusionMatrix
from ..nets import build_model, count_parameters
from ..weights import ModelCard, Normalization, load_model, save_model, zero_negligible_
from .class_weights import cached_class_weights
from .distill import Teacher, distillation_sum
from .init_weights import widen_state_dict
from .inputs import BatchNormalizer, pixel_weights
from .recipes import paper_recipe, recipe_for
from .cuda_graphs import GraphedSteps
from .speed import adam, compile_decision, cuda_graphs_decision, keep_freed_memory, memory_format_for

log = logging.getLogger("enet_seg_ros.train")
CHECKPOINT = "last.pt"
BEST = "best.safetensors"
SELECT = ("last", "holdout", "val")
PRECISIONS = ("auto", "fp32", "bf16")
# Multi-scale epochs: per-sample zoom on top of the pass scale (the random crop-resize of the
# ESPNet authors' code crops a margin of up to ~7% per side and resizes back).
MULTISCALE_ZOOM = (1.0, 1.15)


@dataclass
class TrainConfig:
    """All settings of a run (saved as ``config.json`` in the run directory)."""

    arch: str
    dataset: str
    data_root: str
    out: str
    size: Tuple[int, int] = (480, 360)  # model input size (inference resolution, in the card)
    crop: Optional[Tuple[int, int]] = None  # training crop (default: size)
    epochs: Optional[int] = None  # default: the recipe's (100; the paper recipe's 150-300)
    encoder_epochs: Optional[int] = None  # default: same as epochs
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    class_weighting: str = "enet"
    weighting_c: Optional[float] = None
    stages: str = "both"
    schedule: Optional[str] = None
    scale_range: Tuple[float, float] = (0.75, 1.5)
    workers: int = 0  # kept for compatibility: data is decoded once and augmented in-process
    amp: bool = False  # kept for compatibility: same as precision "bf16"
    seed: int = 0
    init: Optional[str] = None
    val_every: int = 1
    threads: int = 0
    cache_data: bool = True  # False: keep the decoded frames in host memory, not on the GPU
    max_steps_per_epoch: int = 0  # 0 = full epoch (per pass); small values for smoke tests
    freeze_bn: bool = False
    sync_bn: bool = False
    options: Dict[str, Any] = field(default_factory=dict)
    # Set every dropout probability to 0 (ablations; makes DDP and single-process runs comparable).
    no_dropout: bool = False
    # Leave cleanly (resumable) after this many epochs in this invocation; 0 = run to the end.
    stop_after: int = 0
    recipe: str = "default"  # "paper": the papers' full schedules with multi-scale epochs
    # Multi-scale epochs: each epoch is one pass over the data per scale (full frames at
    # scale x size, random crop-resize, flips); None = one pass of random-scale crops.
    epoch_scales: Optional[Tuple[float, ...]] = None
    encoder_batch_size: Optional[int] = None  # default: batch_size (ESPNet paper: 12 vs 6)
    color_jitter: float = 0.0
    precision: str = "auto"  # auto: bf16 on CUDA and on CPUs with AMX / AVX512-BF16, else fp32
    # torch.compile forward + loss (and so their backward): True / False, or None = auto
    # (speed.compile_decision: on CPU, per arch, in runs long enough to repay the compile).
    compile: Optional[bool] = None
    # Replay each training step as one CUDA graph (train/cuda_graphs.py): True / False, or None =
    # auto (speed.cuda_graphs_decision: on for one CUDA process with eager steps).
    cuda_graphs: Optional[bool] = None
    select: str = "last"  # checkpoint selection: last | holdout | val (see the module doc)
    holdout: int = 0  # frames held out of train for select=holdout
    # Wall budget (s) of this run: epochs are fitted from a throughput probe, and training stops
    # (and exports) if it runs over. 0 = no budget.
    budget_s: float = 0.0
    # Knowledge distillation (train/distill.py): teacher weights (path or shipped name), the
    # weight lambda of its term and the temperature T. None = labels only.
    distill: Optional[str] = None
    distill_weight: float = 1.0
    distill_temperature: float = 2.0

    def resolved(self) -> "TrainConfig":
        """Fill unset hyper-parameters from the arch's recipe (``recipe``: default or paper)."""
        cfg = TrainConfig(**asdict(self))
        if cfg.recipe not in ("default", "paper"):
            raise ValueError("recipe must be default or paper, got {!r}".format(cfg.recipe))
        recipe = recipe_for(cfg.arch) if cfg.recipe == "default" else paper_recipe(cfg.arch)
        for key in ("batch_size", "lr", "weight_decay", "weighting_c", "schedule", "epochs",
                    "encoder_batch_size", "epoch_scales"):
            if getattr(cfg, key) is None and recipe.get(key) is not None:
                setattr(cfg, key, recipe[key])
        if cfg.epochs is None:
            cfg.epochs = 100
        if cfg.encoder_epochs is None:
            cfg.encoder_epochs = recipe.get("encoder_epochs", cfg.epochs)
        if cfg.encoder_batch_size is None:
            cfg.encoder_batch_size = cfg.batch_size
        if cfg.epoch_scales is not None:
            cfg.epoch_scales = tuple(float(v) for v in cfg.epoch_scales)
        if cfg.stages not in ("encoder", "decoder", "both"):
            raise ValueError("stages must be encoder, decoder or both")
        # Counts that would otherwise train nothing, divide by zero or loop backwards.
        at_least = {"--val-every": (cfg.val_every, 1), "--threads": (cfg.threads, 0),
                    "--max-steps-per-epoch": (cfg.max_steps_per_epoch, 0), "--stop-after": (cfg.stop_after, 0)}
        if cfg.stages != "encoder":
            at_least["--epochs"] = (cfg.epochs, 1)
        if cfg.stages != "decoder":
            at_least["--encoder-epochs"] = (cfg.encoder_epochs, 1)
        wrong = ["{} must be >= {}, got {}".format(flag, low, value) for flag, (value, low) in at_least.items()
                 if value < low]
        if cfg.lr is not None and not cfg.lr > 0:
            wrong.append("--lr must be > 0, got {}".format(cfg.lr))
        if not 0.0 <= cfg.color_jitter < 1.0:
            wrong.append("--color-jitter must be in [0, 1), got {}".format(cfg.color_jitter))
        if wrong:
            raise ValueError("; ".join(wrong))
        if cfg.select not in SELECT:
            raise ValueError("select must be one of {}, got {!r}".format(", ".join(SELECT), cfg.select))
        if (cfg.select == "holdout") != (cfg.holdout > 0):
            raise ValueError("--select holdout needs --holdout N > 0 frames (and --holdout only goes with it)")
        if cfg.precision not in PRECISIONS:
            raise ValueError("precision must be one of {}".format(", ".join(PRECISIONS)))
        if cfg.distill and (cfg.distill_weight <= 0 or cfg.distill_temperature <= 0):
            raise ValueError("--distill-weight and --distill-temperature must be > 0, got {} and {}".format(
                cfg.distill_weight, cfg.distill_temperature))
        if cfg.amp and cfg.precision == "auto":
            cfg.precision = "bf16"
        return cfg


def effective_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for ``precision`` (auto / fp32 / bf16) on ``device``."""
    if precision == "fp32":
        return "fp32"
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
    else:
        ok = cpu_has_bf16()
    if precision == "bf16" and not ok:
        log.warning("bf16 asked but %s has no bf16 support: training in fp32", device)
    return "bf16" if ok else "fp32"


def holdout_split(n: int, k: int) -> Tuple[List[int], List[int]]:
    """(train indices, held-out indices): ``k`` frames evenly spaced over the sorted list.

    Deterministic and seed-independent (the split must not change between runs being compared);
    evenly spaced so every sequence of a video data set gives some frames.
    """
    if not 0 < k < n:
        raise ValueError("--holdout {} must be between 1 and {} (frames in train) - 1".format(k, n))
    held = sorted(set(int(round(v)) for v in np.linspace(0, n - 1, k)))
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], held


def _dist_info() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _disable_dropout(model: nn.Module) -> int:
    """Set every dropout probability to 0 (``no_dropout``); returns how many modules changed.

    With p = 0 PyTorch returns the input untouched and draws no random numbers.
    """
    changed = 0
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
            changed += 1
    return changed


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` so a concurrent reader (another rank) never sees a partial file."""
    tmp = path.with_name("{}.{}.tmp".format(path.name, os.getpid()))
    tmp.write_text(text)
    os.replace(tmp, path)


def _freeze_batchnorm(model: nn.Module) -> None:
    """With ``freeze_bn``, BNs use running statistics (fine-tuning with tiny batches)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def dataset_statistics(ds: SegmentationDataset, max_images: int = 200) -> Tuple[List[float], List[float]]:
    """Per-channel RGB mean and std (0..255) over up to ``max_images`` training frames."""
    step = max(1, len(ds) // max_images)
    total = np.zeros(3)
    total_sq = np.zeros(3)
    n = 0
    for i in range(0, len(ds), step):
        image = ds.load(i)[0].reshape(-1, 3).astype(np.float64)
        total += image.sum(0)
        total_sq += (image ** 2).sum(0)
        n += image.shape[0]
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean ** 2, 1e-6))
    return [round(float(v), 3) for v in mean], [round(float(v), 3) for v in std]


@dataclass
class _Pass:
    """One pass over the training data inside an epoch (several with multi-scale epochs)."""

    augment: BatchAugment
    index: int  # 0 for single-pass epochs (keeps their seeds and sampler order unchanged)


class Trainer:
    """Runs one training configuration end to end (``run()``), resuming if asked."""

    def __init__(self, config: TrainConfig, resume: bool = False) -> None:
        self.cfg = config.resolved()
        self.resume = resume
        self.rank, self.world = _dist_info()
        self.is_main = self.rank == 0
        self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            # TF32 for whatever stays fp32 (loss, optimiser): these nets lose nothing to it.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        if self.device.type == "cpu":
            keep_freed_memory()  # no page faults on each step's re-allocated activations
        self.memory_format = memory_format_for(self.cfg.arch, self.device)
        # torch.compile-d by run() as speed.compile_decision says (scope step: the first, loss: the second).
        self._forward_loss_fn = self._forward_loss
        self._loss_terms_fn = self._loss_terms
        self._graphs: Optional[GraphedSteps] = None  # set by run() as speed.cuda_graphs_decision says
        # --budget-s: the probe (seconds per epoch, planned epochs) and the whole-epoch wall
        # times measured per stage, for the re-fit at each stage boundary.
        self._probe: Dict[str, Any] = {}
        self._probe_epoch_s: Dict[str, float] = {}
        self._epoch_walls: Dict[str, List[float]] = {}
        self.teacher: Optional[Teacher] = None  # --distill: loaded with the data (needs the classes)
        self.precision = effective_precision(self.cfg.precision, self.device)
        self.out = Path(self.cfg.out)
        for name, batch in (("--batch-size", self.cfg.batch_size), ("--encoder-batch-size", self.cfg.encoder_batch_size)):
            if batch < 1 or batch % self.world:
                raise ValueError("{} {} (the global batch) must be a positive multiple of the {} processes"
                                 .format(name, batch, self.world))
        if self.cfg.sync_bn and self.world > 1 and self.device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA (SyncBatchNorm has no CPU kernels); on CPU use --freeze-bn or neither")
        if self.cfg.budget_s and resume:
            raise ValueError("--budget-s fits the epochs at the start of a run; it cannot be combined with --resume")

    # ----------------------------------------------------------------------------------- setup
    def _prepare_data(self) -> None:
        cfg = self.cfg
        # cache=True while preparing: statistics, class weights and the frame store share one decode.
        full = build_dataset(cfg.dataset, cfg.data_root, "train", cache=True)
        self.val_set = build_dataset(cfg.dataset, cfg.data_root, "val", cache=False)
        # Fail before training on any bad file, listing the first offenders.
        full.check()
        self.val_set.check()
        self.spec = full.spec
        self.holdout_set: Optional[SegmentationDataset] = None
        if cfg.select == "holdout":
            keep, held = holdout_split(len(full), cfg.holdout)
            self.train_set = SegmentationDataset([full.pairs[i] for i in keep], full.spec, cache=True)
            self.holdout_set = SegmentationDataset([full.pairs[i] for i in held], full.spec)
        else:
            self.train_set = full
        per_rank = len(self.train_set) // self.world
        largest = max(cfg.batch_size, cfg.encoder_batch_size)
        if per_rank < largest // self.world:
            raise ValueError("training set {} has {} frames: too few for a global batch of {} ({} per process); "
                             "lower --batch-size".format(cfg.data_root, len(self.train_set), largest,
                                                         largest // self.world))
        stats_file = self.out / "dataset_stats.json"
        if stats_file.is_file():
            stats = json.loads(stats_file.read_text())
        else:
            mean, std = dataset_statistics(self.train_set)
            stats = {"mean": mean, "std": std}
            if self.is_main:
                _write_atomic(stats_file, json.dumps(stats))
        self.norm = Normalization(channel_order="rgb", mean=stats["mean"], std=stats["std"], scale=1.0)
        # Training and validation inputs are normalised as inference does (one source of truth).
        self.pre = Preprocess(input_size=tuple(cfg.size), channel_order=self.norm.channel_order,
                              mean=tuple(self.norm.mean), std=tuple(self.norm.std), scale=self.norm.scale)
        self._normalize = BatchNormalizer(self.pre, self.device, self.memory_format)
        label_paths = [lab for _, lab in self.train_set.pairs]
        weights = cached_class_weights(cfg.class_weighting, label_paths, self.spec.num_classes,
                                       lambda i: self.train_set.load(i)[1], self.out.parent / ".class_weights",
                                       c=cfg.weighting_c)
        self.class_weights = torch.tensor(weights, device=self.device) if weights is not None else None
        # Decode once: uint8 tensors on the training device (host memory with --no-cache).
        t0 = time.time()
        store_device = self.device if cfg.cache_data else torch.device("cpu")
        self.train_store = FrameStore(self.train_set, cfg.size, store_device)
        self.val_store = FrameStore(self.val_set, cfg.size, store_device)
        self.holdout_store = (FrameStore(self.holdout_set, cfg.size, store_device)
                              if self.holdout_set is not None else None)
        log.info("decoded %d train + %d val frames in %.1f s (%s)", len(self.train_store), len(self.val_store),
                 time.time() - t0, store_device)
        self.train_set.clear_cache()
        if self.is_main:
            (self.out / "class_weights.json").write_text(json.dumps({"kind": cfg.class_weighting, "c": cfg.weighting_c,
                                                                     "weights": weights}))

    def _build_model(self) -> nn.Module:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # same initial weights for the same seed (a resume loads its own)
        model = build_model(cfg.arch, self.spec.num_classes, **cfg.options)
        if cfg.no_dropout:
            log.info("--no-dropout: %d dropout modules set to p=0", _disable_dropout(model))
        if cfg.init:
            init_model, init_card = load_model(cfg.init)
            # ESPNet-C is ESPNet's encoder: its weights start an ESPNet; any other pair shares nothing.
            if init_card.arch != cfg.arch and (init_card.arch, cfg.arch) != ("espnet_c", "espnet"):
                raise ValueError("--init {} holds {} weights; they cannot start a {} network".format(
                    cfg.init, init_card.arch, cfg.arch))
            state = init_model.state_dict()
            if state.pop("logit_offset", None) is not None:
                # A decision rule fitted to the old weights; training moves them, so it is
                # dropped here and fitted again afterwards (enet-seg calibrate).
                log.info("--init %s: its logit offsets are not carried over (run enet-seg calibrate "
                         "on the trained weights)", cfg.init)
            widened = widen_state_dict(model, state)
            if widened:
                log.info("--init %s: %s widened: new input channels start at zero",
                         cfg.init, ", ".join(widened))
            missing, unexpected = model.load_state_dict(state, strict=False)
            if len(unexpected) == len(state):
                raise ValueError("--init {}: none of its {} tensors fits this {} network".format(
                    cfg.init, len(state), cfg.arch))
            log.info("initialised from %s (%d missing, %d unexpected keys)", cfg.init, len(missing), len(unexpected))
        if cfg.sync_bn and self.world > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # channels_last: measured here, it halves ENet's CPU training step (0.8 s vs 1.4 s,
        # batch 4); on CUDA it is the layout of the bf16 tensor-core convolutions. ESPNet trains
        # faster in NCHW on CPU (speed.memory_format_for).
        return model.to(self.device).to(memory_format=self.memory_format)

    def _stages(self) -> List[str]:
        return {"both": ["encoder", "decoder"], "encoder": ["encoder"], "decoder": ["decoder"]}[self.cfg.stages]

    def _stage_epochs(self, stage: str) -> int:
        return self.cfg.encoder_epochs if stage == "encoder" else self.cfg.epochs

    def _set_stage_epochs(self, stage: str, epochs: int) -> None:
        if stage == "encoder":
            self.cfg.encoder_epochs = epochs
        else:
            self.cfg.epochs = epochs

    def _planned_steps(self, sampler: DistributedSampler, passes: List["_Pass"], stages: List[str]) -> int:
        """Training steps of the whole schedule (all stages, epochs and passes)."""
        n = len(sampler)
        return sum(self._stage_epochs(s) * len(passes) * self._steps(n, self._stage_batch(s) // self.world)
                   for s in stages)

    def _stage_batch(self, stage: str) -> int:
        """Global batch of ``stage`` (the ESPNet recipe trains ESPNet-C with a larger one)."""
        return self.cfg.encoder_batch_size if stage == "encoder" else self.cfg.batch_size

    def _passes(self) -> List[_Pass]:
        """The passes of one epoch: one random-scale crop pass, or one pass per epoch scale."""
        cfg = self.cfg
        ignore = self.spec.ignore_index
        if not cfg.epoch_scales:
            return [_Pass(BatchAugment(cfg.size, ignore, tuple(cfg.scale_range),
                                       crop_size=tuple(cfg.crop) if cfg.crop else None,
                                       color_jitter=cfg.color_jitter), 0)]
        passes = []
        for k, scale in enumerate(cfg.epoch_scales):
            out = (max(8, int(round(cfg.size[0] * scale))), max(8, int(round(cfg.size[1] * scale))))
            passes.append(_Pass(BatchAugment(cfg.size, ignore, (scale * MULTISCALE_ZOOM[0], scale * MULTISCALE_ZOOM[1]),
                                             crop_size=out, color_jitter=cfg.color_jitter), k))
        return passes

    def _optimizer(self, model: nn.Module):
        cfg = self.cfg
        return adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                    capturable=self._graphs is not None)

    def _scheduler(self, opt, stage: str):
        epochs = self._stage_epochs(stage)
        if self.cfg.schedule == "poly":
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: (1 - e / max(1, epochs)) ** 0.9)
        if self.cfg.schedule == "step":
            # Halve every third of the schedule: every 100 epochs of the papers' 300.
            return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, epochs // 3), gamma=0.5)
        if self.cfg.schedule == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=5)
        raise ValueError("unknown schedule {!r}".format(self.cfg.schedule))

    # ------------------------------------------------------------------------------ checkpoint
    def _save_checkpoint(self, state: Dict[str, Any]) -> None:
        if not self.is_main:
            return
        tmp = self.out / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.out / CHECKPOINT)

    def _load_checkpoint(self) -> Dict[str, Any]:
        """The run's ``last.pt`` (``--resume``); ValueError naming it when it is missing or unreadable."""
        path = self.out / CHECKPOINT
        if not path.is_file():
            # A mistyped --out or a forgotten copy must not start a multi-day run over from epoch 0.
            raise ValueError("--resume: {} holds no checkpoint ({}); drop --resume to start a new run there".format(
                self.out, CHECKPOINT))
        try:
            # Our own checkpoint of tensors and plain Python values: weights_only keeps it unpickle-free.
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # empty, truncated, random bytes: torch raises several kinds
            raise ValueError("{} is unreadable ({}); restore it from checkpoints/ or start a new run".format(
                path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)) from None
        if not isinstance(state, dict) or not {"model", "stage_index", "epoch"} <= set(state):
            raise ValueError("{} is not a training checkpoint of enet-seg train".format(path))
        return state

    # ---------------------------------------------------------------------------------- epochs
    def _loss_terms(self, out: torch.Tensor, target: torch.Tensor,
                    teacher: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(weighted loss sum, weighted count of scored pixels) of this process's batch, in float32.

        ``teacher``: the teacher's logits of the batch (--distill), whose term joins the sum.
        """
        ignore = self.spec.ignore_index
        logits = out.float()
        loss_sum = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=ignore, reduction="sum")
        weights = pixel_weights(target, self.class_weights, ignore)
        if teacher is not None:
            loss_sum = loss_sum + self.cfg.distill_weight * distillation_sum(
                logits, teacher, weights, self.cfg.distill_temperature)
        return loss_sum, weights.sum().detach()

    def _forward_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, encoder: bool,
                      teacher: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Forward pass and loss terms of one batch: what ``torch.compile`` compiles (one graph with the loss)."""
        # No cast cache under CUDA graphs: each replay must cast the weights it has now.
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16",
                            cache_enabled=self._graphs is None):
            out = model(x)
        if encoder:
            # nearest-exact takes each output cell's centre pixel ("nearest" takes its corner).
            y = F.interpolate(y[:, None].float(), size=out.shape[-2:], mode="nearest-exact")[:, 0].long()
        return self._loss_terms_fn(out, y, teacher)

    def _loss(self, loss_sum: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
        """The loss normalised by the global (all-rank) weighted pixel count."""
        denom = denom.clone()
        if self.world > 1:
            dist.all_reduce(denom)
        # DDP averages gradients over ranks, so scale by the world size to get sum / global count.
        return loss_sum * self.world / denom.clamp(min=1)

    def _batch(self, p: _Pass, indices: Sequence[int], stage_index: int, epoch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Augmented batch of ``indices`` (frames of the train store) on the device: float RGB 0..255, labels."""
        cfg = self.cfg
        params = []
        for i in indices:
            key = [cfg.seed, stage_index, epoch, int(i)] + ([p.index] if p.index else [])
            params.append(p.augment.draw(np.random.default_rng(key)))
        idx = torch.as_tensor(list(indices), device=self.train_store.images.device)
        images, labels = self.train_store.images[idx], self.train_store.labels[idx]
        return p.augment(images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True), params)

    def _step(self, model, opt, rgb: torch.Tensor, y: torch.Tensor, stage: str) -> torch.Tensor:
        """One optimiser step on an augmented batch (float RGB 0..255); returns the (detached) loss."""
        encoder = stage == "encoder"
        teacher = self.teacher.logits(rgb) if self.teacher is not None and not encoder else None

        def body(rgb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            loss = self._loss(*self._forward_loss_fn(model, self._normalize(rgb), y, encoder, teacher))
            loss.backward()
            opt.step()
            return loss.detach()

        if self._graphs is not None:
            return self._graphs.step(stage, opt, body, rgb, y)
        opt.zero_grad(set_to_none=True)
        return body(rgb, y)

    def _pass_order(self, sampler: DistributedSampler, p: _Pass, stage_index: int, epoch: int) -> List[int]:
        # Pass 0 keeps the single-pass epoch's sampler seed (runs without epoch scales unchanged).
        sampler.set_epoch(epoch + 1000 * stage_index + 100000 * p.index)
        return list(iter(sampler))

    def _steps(self, order_len: int, per_rank: int) -> int:
        steps = order_len // per_rank
        return min(steps, self.cfg.max_steps_per_epoch) if self.cfg.max_steps_per_epoch else steps

    def _train_epoch(self, model, opt, sampler, passes: List[_Pass], stage: str, stage_index: int,
                     epoch: int) -> Tuple[float, int]:
        from tqdm import tqdm

        model.train()
        if self.cfg.freeze_bn:
            _freeze_batchnorm(model)
        per_rank = self._stage_batch(stage) // self.world
        orders = [self._pass_order(sampler, p, stage_index, epoch) for p in passes]
        total_steps = sum(self._steps(len(o), per_rank) for o in orders)
        losses: List[torch.Tensor] = []
        images = 0
        bar = tqdm(total=total_steps, disable=not self.is_main, desc="{} {}".format(stage, epoch),
                   mininterval=10.0, dynamic_ncols=True)
        for p, order in zip(passes, orders):
            for step in range(self._steps(len(order), per_rank)):
                x, y = self._batch(p, order[step * per_rank:(step + 1) * per_rank], stage_index, epoch)
                losses.append(self._step(model, opt, x, y, stage))
                images += x.shape[0] * self.world
                bar.update(1)
        bar.close()
        # One host sync per epoch, not per step (a per-step float() stalls the GPU queue).
        # Each rank's loss is its share of the global loss times the world size (see _loss).
        total = float(torch.stack(losses).double().sum()) / self.world if losses else 0.0
        if self.world > 1:
            summed = torch.tensor([total], dtype=torch.float64, device=self.device)
            dist.all_reduce(summed)
            total = float(summed)
        return total / max(1, len(losses)), images

    @torch.no_grad()
    def validate(self, model: nn.Module, stage: str, store: Optional[FrameStore] = None) -> Dict[str, Any]:
        """Mean IoU etc. on the validation split (or ``store``); encoder stage: on labels at 1/stride."""
        net = model.module if hasattr(model, "module") else model
        net.eval()
        store = self.val_store if store is None else store
        n = self.spec.num_classes
        counts = torch.zeros(n * n, dtype=torch.int64, device=self.device)
        mine = list(range(self.rank, len(store), self.world))
        for start in range(0, len(mine), 8):
            idx = torch.as_tensor(mine[start:start + 8], device=store.images.device)
            x = self._normalize(store.images[idx].to(self.device).float())
            label = store.labels[idx].to(self.device).long()
            pred = net(x).argmax(1)  # fp32: scored as the exported model runs
            if stage == "encoder":
                label = F.interpolate(label[:, None].float(), size=pred.shape[-2:], mode="nearest-exact")[:, 0].long()
            valid = label < n  # ignore (and any id beyond the classes) is not scored
            counts += torch.bincount((label[valid] * n + pred[valid]).view(-1), minlength=n * n)
        if self.world > 1:
            dist.all_reduce(counts)
        cm = ConfusionMatrix.from_counts(counts.view(n, n).cpu().numpy(), ignore_index=self.spec.ignore_index)
        return cm.summary(self.spec.class_names)

    # ---------------------------------------------------------------------------------- budget
    def _fit_budget(self, model, net, sampler, passes: List[_Pass], stages: List[str]) -> Dict[str, Any]:
        """Fit ``epochs`` / ``encoder_epochs`` so the run ends within ``budget_s`` (probe a few steps).

        The probe trains a few steps per stage and pass on the real model (warming up cuDNN and
        any compiled graph) and then restores the weights and the RNG state.
        """
        cfg = self.cfg
        t_start = time.time()
        saved = copy.deepcopy(net.state_dict())
        rng = torch.get_rng_state()
        probe: Dict[str, Any] = {"stages": {}}
        per_epoch: Dict[str, float] = {}
        for si, stage in enumerate(stages):
            net.encoder_only = stage == "encoder"
            opt = self._optimizer(model)
            per_rank = self._stage_batch(stage) // self.world
            model.train()
            seconds = 0.0
            rates = {}
            for p in passes:
                order = self._pass_order(sampler, p, si, 0)
                steps = self._steps(len(order), per_rank)
                timed = []
                for k in range(min(4, steps)):
                    _sync(self.device)
                    t0 = time.time()
                    x, y = self._batch(p, order[k * per_rank:(k + 1) * per_rank], si, 0)
                    self._step(model, opt, x, y, stage)
                    _sync(self.device)
                    timed.append(time.time() - t0)
                step_s = min(timed[1:]) if len(timed) > 1 else timed[0]  # the first step warms up
                rates["{}x{}".format(p.augment.crop_w, p.augment.crop_h)] = round(per_rank * self.world / step_s, 1)
                seconds += steps * step_s
            t0 = time.time()
            self.validate(model, stage)
            val_s = time.time() - t0
            per_epoch[stage] = seconds + val_s / max(1, cfg.val_every)
            probe["stages"][stage] = {"images_per_second": rates, "epoch_seconds": round(per_epoch[stage], 2),
                                      "val_seconds": round(val_s, 2)}
        net.load_state_dict(saved)
        torch.set_rng_state(rng)
        # Safety margin: the probe's best-of steps are optimistic, and the end has a final
        # validation (+ holdout) and the export.
        left = (cfg.budget_s - (time.time() - self._t_run)) * 0.85  # decoding and the probe count too
        planned = {"encoder": cfg.encoder_epochs, "decoder": cfg.epochs}
        total_planned = sum(planned[s] * per_epoch[s] for s in stages)
        factor = min(1.0, left / max(total_planned, 1e-9))
        for stage in stages:
            self._set_stage_epochs(stage, int(self._from_rank0(max(1, int(planned[stage] * factor)))))
        self._probe, self._probe_epoch_s = probe, per_epoch
        probe.update({"budget_s": cfg.budget_s, "probe_seconds": round(time.time() - t_start, 1),
                      "planned_epochs": planned, "fitted_epochs": {s: self._stage_epochs(s) for s in stages},
                      "device": str(self.device), "precision": self.precision,
                      "cuda_graphs": self._graphs is not None and self._graphs.disabled is None})
        log.info("budget %.0f s: probe %s; epochs %s", cfg.budget_s, json.dumps(probe["stages"]),
                 probe["fitted_epochs"])
        self._save_budget()
        return probe

    def _save_budget(self) -> None:
        """``budget.json`` (the probe and any re-fit) and ``config.json`` (the fitted epochs)."""
        if self.is_main:
            _write_atomic(self.out / "budget.json", json.dumps(self._probe, indent=2))
            _write_atomic(self.out / "config.json", json.dumps(asdict(self.cfg), indent=2))

    def _from_rank0(self, value: float) -> float:
        """Rank 0's ``value`` on every rank. Decisions taken from wall clocks (fitted epochs,
        over budget) differ between processes, and ranks that train different epochs hang in
        DDP's collectives."""
        if self.world == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.broadcast(t, src=0)
        return float(t.item())

    def _refit_budget(self, stage: str, previous: str) -> None:
        """Fit ``stage``'s epochs again at its start, from the previous stage's measured epochs.

        The probe times a few steps, possibly while concurrent runs are still decoding their
        data, so it can be optimistic (or pessimistic); a stage cut by the budget check stops
        mid-schedule, its learning rate not decayed. Here the previous stage's real epoch wall
        times (median, its first epoch left out when there are more: graph capture, warm-up)
        scale the probe's estimate for ``stage``, whose epochs are set to what the time left
        holds (at least 1, at most the planned schedule) before its schedule is made.
        """
        cfg = self.cfg
        walls = self._epoch_walls.get(previous) or []
        probed = self._probe_epoch_s
        if not walls or previous not in probed or stage not in probed:
            return
        measured = float(np.median(walls[1:] if len(walls) > 1 else walls))
        estimate = probed[stage] * measured / max(probed[previous], 1e-9)
        left = cfg.budget_s - (time.time() - self._t_run)
        planned = self._probe["planned_epochs"][stage]
        before = self._stage_epochs(stage)
        # 0.9: the end (final validation, export) and the variation between epochs
        fitted = int(self._from_rank0(max(1, min(planned, 0.9 * left // max(estimate, 1e-9)))))
        self._set_stage_epochs(stage, fitted)
        self._probe.setdefault("refit", {})[stage] = {
            "measured_epoch_seconds": {previous: round(measured, 3)}, "estimated_epoch_seconds": round(estimate, 3),
            "seconds_left": round(left, 1), "epochs_before": before, "epochs": fitted}
        log.info("budget: %s epochs took %.2f s (probe: %.2f s), so %s gets %d epochs (was %d) in the %.0f s left",
                 previous, measured, probed[previous], stage, fitted, before, left)
        self._save_budget()

    # ------------------------------------------------------------------------------------- run
    def run(self) -> Dict[str, Any]:
        """Train every stage; returns the metrics of the exported model (on val)."""
        cfg = self.cfg
        t_run = self._t_run = time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        if not self.resume and (self.out / CHECKPOINT).is_file():
            raise ValueError("{} already holds a run ({}): pass --resume to continue it or choose another --out"
                             .format(self.out, CHECKPOINT))
        # Everything about the resumed state is checked before anything in the folder changes.
        ckpt = self._load_checkpoint() if self.resume else None
        if ckpt is not None:
            _check_resume(self.out / "config.json", cfg, ckpt, self._stages(), say=self.is_main)
        if self.is_main:
            if ckpt is None:  # a new run: rows of an attempt that never reached a checkpoint go
                (self.out / "log.csv").unlink(missing_ok=True)
            _write_atomic(self.out / "config.json", json.dumps(asdict(cfg), indent=2))
        self._prepare_data()
        if cfg.distill:
            self.teacher = Teacher(cfg.distill, self.spec.class_names, self.device, self.precision == "bf16")
            log.info("distilling from %s (%s), weight %g, temperature %g, in the decoder stage", self.teacher.path,
                     self.teacher.card.arch, cfg.distill_weight, cfg.distill_temperature)
        model = self._build_model()
        net = model
        stages = self._stages()
        stage_index, start_epoch, best, train_time = 0, 0, {"miou": -1.0}, 0.0
        if ckpt is not None:
            try:
                net.load_state_dict(ckpt["model"])
            except RuntimeError as exc:
                raise ValueError("{} does not fit this {} network: {}".format(
                    self.out / CHECKPOINT, cfg.arch, str(exc).splitlines()[0])) from None
            stage_index, start_epoch = ckpt["stage_index"], ckpt["epoch"] + 1
            best, train_time = json.loads(ckpt["best"]), ckpt["train_time"]
            log.info("resuming %s at stage %s epoch %d", self.out, stages[stage_index], start_epoch)
            if self.is_main:
                # Rows written after the checkpoint (a crash between the two) would be repeated.
                _trim_log(self.out / "log.csv", stages, stage_index, ckpt["epoch"])
        if self.world > 1:
            # Each stage leaves some parameters unused (the decoder while training the encoder,
            # the encoder head afterwards): DDP must be told, and leaves their gradients None.
            model = nn.parallel.DistributedDataParallel(
                net, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        passes = self._passes()
        sampler = DistributedSampler(range(len(self.train_store)), num_replicas=self.world, rank=self.rank,
                                     shuffle=True, seed=cfg.seed, drop_last=True)
        self.compile_scope, why = compile_decision(cfg.compile, cfg.arch, self.device,
                                                   self._planned_steps(sampler, passes, stages), self.world)
        log.info("torch.compile: %s", why)
        if self.compile_scope != "off":
            import torch._dynamo as dynamo

            # Stages (encoder_only) and multi-scale passes are distinct graphs; allow them all.
            dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 32)
            if cfg.compile is None:
                dynamo.config.suppress_errors = True  # auto: a failed compile falls back to eager
            # Forward and loss in one graph (the float cast, log-softmax and NLL fuse too: ~7 %
            # of ENet's compiled CPU step); validation and export use the eager model.
            if self.compile_scope == "step":
                self._forward_loss_fn = torch.compile(self._forward_loss)
            else:
                self._loss_terms_fn = torch.compile(self._loss_terms)
        graphs, why = cuda_graphs_decision(cfg.cuda_graphs, self.device, self.world, bool(cfg.distill),
                                           self.compile_scope)
        log.info("CUDA graphs: %s", why)
        self._graphs = GraphedSteps(self.device) if graphs else None
        if cfg.budget_s and ckpt is None:
            self._fit_budget(model, net, sampler, passes, stages)
        log.info("training %s on %s in %s, %d pass(es) per epoch, epochs %s", cfg.arch, self.device, self.precision,
                 len(passes), {s: self._stage_epochs(s) for s in stages})
        csv_path = self.out / "log.csv"
        writer = _tensorboard(self.out / "tb") if self.is_main else None
        trained = 0  # epochs trained by this invocation (for stop_after)
        over_budget = False
        result: Dict[str, Any] = best
        for si in range(stage_index, len(stages)):
            if cfg.stop_after and trained >= cfg.stop_after:
                if self.is_main:
                    log.info("stopping after %d epochs as asked (--stop-after); continue with --resume", trained)
                break
            stage = stages[si]
            if cfg.budget_s and si > 0 and ckpt is None:
                self._refit_budget(stage, stages[si - 1])
            net.encoder_only = stage == "encoder"
            opt = self._optimizer(model)
            sched = self._scheduler(opt, stage)
            # Kept in the checkpoint for older runs' --resume; bf16 needs no loss scaling.
            scaler = torch.amp.GradScaler(enabled=False)
            first = start_epoch if si == stage_index else 0
            if ckpt is not None and si == stage_index and "optimizer" in ckpt:
                opt.load_state_dict(ckpt["optimizer"])
                _match_optimizer(opt, graphs=self._graphs is not None)
                sched.load_state_dict(ckpt["scheduler"])
                torch.set_rng_state(ckpt["torch_rng"].cpu())
                if self.device.type == "cuda" and "cuda_rng" in ckpt:
                    # Dropout on the GPU draws from the CUDA generator: resume it too.
                    torch.cuda.set_rng_state(ckpt["cuda_rng"].cpu(), self.device)
            last_stage = si == len(stages) - 1
            for epoch in range(first, self._stage_epochs(stage)):
                if cfg.stop_after and trained >= cfg.stop_after:
                    if self.is_main:
                        log.info("stopping after %d epochs as asked (--stop-after); continue with --resume", trained)
                    break
                trained += 1
                t0 = time.time()
                loss, images = self._train_epoch(model, opt, sampler, passes, stage, si, epoch)
                _sync(self.device)
                seconds = time.time() - t0
                train_time += seconds
                flushed = zero_negligible_(net)  # subnormal weights slow fp32 steps on x86 3x
                if flushed and self.is_main:
                    log.debug("%s epoch %d: %d weights below 2^-100 set to zero", stage, epoch, flushed)
                # A float32 tensor when CUDA graphs replay the update: logged to 7 significant
                # digits, float32's (5e-4, not 0.0005000000237), the same in graphed and eager runs.
                lr = float("{:.7g}".format(float(opt.param_groups[0]["lr"])))
                last_epoch = epoch == self._stage_epochs(stage) - 1
                if cfg.budget_s and not last_epoch and self._from_rank0(time.time() - t_run > cfg.budget_s):
                    log.warning("over the %.0f s budget after %s epoch %d: stopping here and exporting",
                                cfg.budget_s, stage, epoch)
                    over_budget = last_epoch = True
                metrics: Dict[str, Any] = {}
                held: Dict[str, Any] = {}
                if (epoch + 1) % cfg.val_every == 0 or last_epoch:
                    metrics = self.validate(model, stage)
                    if self.holdout_store is not None:
                        held = self.validate(model, stage, self.holdout_store)
                if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    if metrics:
                        sched.step((held or metrics)["miou"] or 0.0)
                else:
                    sched.step()
                chosen = {"val": metrics, "holdout": held}.get(cfg.select)
                if last_stage and metrics and (
                        (cfg.select == "last" and last_epoch)
                        or (cfg.select != "last" and (chosen["miou"] or 0) > best["miou"])):
                    best = dict(chosen if cfg.select != "last" else metrics, epoch=epoch, stage=stage)
                    result = dict(metrics, epoch=epoch, stage=stage)
                    if self.is_main:
                        self._export(net, metrics, held, epoch, stage, train_time, over_budget)
                if self.is_main:
                    row = {"stage": stage, "epoch": epoch, "train_loss": round(loss, 5), "lr": lr,
                           "val_miou": metrics.get("miou"), "val_pixel_accuracy": metrics.get("pixel_accuracy"),
                           "epoch_seconds": round(seconds, 1), "images_per_second": round(images / max(seconds, 1e-9), 2)}
                    if self.holdout_store is not None:
                        row["holdout_miou"] = held.get("miou")
                    _append_csv(csv_path, row)
                    if writer is not None:
                        for key in ("train_loss", "lr", "val_miou", "holdout_miou", "images_per_second"):
                            if row.get(key) is not None:
                                writer.add_scalar("{}/{}".format(stage, key), row[key], epoch)
                    log.info("%s epoch %d: loss %.4f lr %.2e val mIoU %s (%.0f s, %.1f images/s)", stage, epoch, loss,
                             lr, "-" if not metrics else "{:.4f}".format(metrics["miou"] or 0), seconds,
                             images / max(seconds, 1e-9))
                self._save_checkpoint({
                    "model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict(), "torch_rng": torch.get_rng_state(), "stage_index": si,
                    **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
                    "epoch": epoch, "best": json.dumps(best), "train_time": train_time,
                })
                self._epoch_walls.setdefault(stage, []).append(time.time() - t0)
                if over_budget:
                    break
            ckpt = None
            if over_budget:
                break
        if writer is not None:
            writer.close()
        if self._graphs is not None:
            log.info("CUDA graphs: %d captures, %d replays%s", self._graphs.captures, self._graphs.replays,
                     "; " + self._graphs.disabled if self._graphs.disabled else "")
        return result

    def _export(self, net: nn.Module, val: Dict[str, Any], held: Dict[str, Any], epoch: int, stage: str,
                train_time: float, over_budget: bool) -> None:
        """Write ``best.safetensors`` (+ card): the selected model and its val scores."""
        cfg = self.cfg
        protocol = {
            "select": cfg.select,
            "selected_on": {"last": "nothing (fixed schedule, last epoch exported)",
                            "holdout": "{} frames held out of train".format(cfg.holdout),
                            "val": "val (optimistic: the reported val score also chose the checkpoint)"}[cfg.select],
            "scored_on": "val",
            "hyper_parameters": "recipe {} (not tuned on val by this run)".format(cfg.recipe),
        }
        if cfg.select == "holdout":
            protocol["holdout_frames"] = [p[0].name for p in self.holdout_set.pairs]
        metrics = {"split": "val", "stage": stage, "epoch": epoch, "protocol": protocol,
                   "train_time_s": round(train_time, 1), "precision": self.precision,
                   "val_miou": val["miou"], "val_pixel_accuracy": val["pixel_accuracy"],
                   "val_mean_class_accuracy": val["mean_class_accuracy"], "val_class_iou": val["class_iou"],
                   "params": count_parameters(net)}
        if held:
            metrics["holdout_miou"] = held["miou"]
        if self.teacher is not None:
            metrics["distilled_from"] = dict(self.teacher.describe(), weight=cfg.distill_weight,
                                             temperature=cfg.distill_temperature)
        if over_budget:
            metrics["stopped_early"] = "over the --budget-s wall budget"
        card = ModelCard.for_dataset(
            cfg.arch, self.spec, list(cfg.size), normalization=self.norm, options=dict(cfg.options),
            recipe={k: v for k, v in asdict(cfg).items() if k not in ("out", "data_root")},
            metrics=metrics, source="trained with enet_seg_ros (enet-seg train)",
        )
        was = net.encoder_only
        net.encoder_only = False
        save_model(self.out / BEST, net, card)
        net.encoder_only = was


def _match_optimizer(opt: torch.optim.Optimizer, graphs: bool) -> None:
    """After loading a checkpoint's optimiser state: this run's capturable setting and lr type.

    A checkpoint written by a CUDA-graph run carries ``capturable=True`` and a tensor ``lr``;
    one written without graphs, a float. Resuming on the other kind of run (another device,
    ``--no-cuda-graphs``) keeps the values and converts the form.
    """
    for group in opt.param_groups:
        group["capturable"] = graphs
        if not graphs and isinstance(group["lr"], torch.Tensor):
            group["lr"] = float(group["lr"])


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work (timing); no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trim_log(path: Path, stages: List[str], stage_index: int, epoch: int) -> None:
    """Drop log rows after (``stage_index``, ``epoch``), the last checkpointed epoch."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if r.get("stage") in stages and str(r.get("epoch") or "").isdigit()
            and (stages.index(r["stage"]), int(r["epoch"])) <= (stage_index, epoch)]  # a cut-off row goes too
    if len(keep) == len(rows) or not rows:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)


# Settings a resumed run cannot take: the network's shape, the stages, and what the restored
# optimiser, scheduler and random state carry (a new value would be recorded but not used).
# (--init is not among them: the checkpoint's weights replace the initial ones anyway.)
RESUME_FIXED = ("arch", "dataset", "options", "stages", "lr", "weight_decay", "seed")


def _check_resume(path: Path, cfg: TrainConfig, ckpt: Dict[str, Any], stages: List[str], say: bool = True) -> None:
    """On --resume: refuse changes the resumed run would not apply, warn about the others (``say``).

    Once the encoder stage is over its epoch count is history: the run's own value is kept in
    ``cfg`` (``--epochs`` alone also moves a default ``encoder_epochs``). Raises ValueError naming
    each refused setting (nothing in the run folder has changed yet).
    """
    try:
        old = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        old = {}
    new = json.loads(json.dumps(asdict(cfg)))  # tuples -> lists, as saved
    changed = sorted(k for k in new if k in old and old[k] != new[k] and k != "stop_after")
    stage_index, epoch = int(ckpt["stage_index"]), int(ckpt["epoch"])
    refused = ["{} {} -> {}".format(k, old[k], new[k]) for k in changed if k in RESUME_FIXED]
    if stage_index >= len(stages):
        refused.append("the checkpoint is in stage {} of a run with more stages than {}".format(stage_index, stages))
    else:
        stage = stages[stage_index]
        if stage == "decoder" and "encoder_epochs" in changed:
            cfg.encoder_epochs = old["encoder_epochs"]
            changed.remove("encoder_epochs")
        key = "encoder_epochs" if stage == "encoder" else "epochs"
        planned = getattr(cfg, key)
        # A last stage cut to end at or before the checkpoint would train and export nothing (an
        # earlier stage cut there just ends, and the next one starts).
        if (stage_index == len(stages) - 1 and planned is not None and planned <= epoch + 1
                and planned != old.get(key, planned)):
            refused.append("{} epochs {} end at or before the checkpoint's {} epoch {}".format(
                stage, planned, stage, epoch))
    if refused:
        raise ValueError("--resume cannot continue {} with these settings: {}; keep the run's values (config.json) "
                         "or start a new run".format(path.parent, "; ".join(refused)))
    changed = [k for k in changed if k not in RESUME_FIXED]
    if changed and say:
        log.warning("--resume with changed settings (the run continues with the new values): %s",
                    ", ".join("{} {} -> {}".format(k, old[k], new[k]) for k in changed))


def _append_csv(path: Path, row: Dict[str, Any]) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(str(path))


def main_worker(config: TrainConfig, resume: bool) -> Dict[str, Any]:
    """Entry for one process (also under ``torchrun``: initialises the process group from env)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if _dist_info()[0] != 0:
        # Rank-0-only logging: other ranks report only warnings and errors.
        logging.getLogger("enet_seg_ros").setLevel(logging.WARNING)
    try:
        return Trainer(config, resume=resume).run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
