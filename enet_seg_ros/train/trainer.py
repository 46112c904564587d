"""The training loop: two-stage training, resumable checkpoints, validation, DDP via torchrun.

Reproducibility: every sample's augmentation uses its own generator seeded by
(seed, stage, epoch, index), and the sampler is a ``DistributedSampler`` even for one process,
so a run resumed from a checkpoint, or split over N processes with the same global batch,
sees the same batches. The loss is normalised by the global (all-rank) weighted pixel count,
so DDP gradients equal the single-process gradients of the same global batch.

What still differs between N processes and one is what runs per process: BatchNorm batch
statistics (per-rank batches; SyncBatchNorm needs CUDA) and Dropout masks (per-process RNG).
``freeze_bn`` + ``no_dropout`` remove both, which is how the DDP equivalence test compares them.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..data.datasets import SegmentationDataset, build_dataset
from ..data.transforms import TrainAugment, normalize
from ..evaluate.metrics import ConfusionMatrix
from ..nets import build_model, count_parameters
from ..weights import ModelCard, Normalization, load_model, save_model
from .class_weights import cached_class_weights
from .recipes import recipe_for

log = logging.getLogger("enet_seg_ros.train")
CHECKPOINT = "last.pt"
BEST = "best.safetensors"


@dataclass
class TrainConfig:
    """All settings of a run (saved as ``config.json`` in the run directory)."""

    arch: str
    dataset: str
    data_root: str
    out: str
    size: Tuple[int, int] = (480, 360)  # model input size (inference resolution, in the card)
    crop: Optional[Tuple[int, int]] = None  # training crop (default: size)
    epochs: int = 100
    encoder_epochs: Optional[int] = None  # default: same as epochs
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    class_weighting: str = "enet"
    weighting_c: Optional[float] = None
    stages: str = "both"
    schedule: Optional[str] = None
    scale_range: Tuple[float, float] = (0.75, 1.5)
    workers: int = 0
    amp: bool = False
    seed: int = 0
    init: Optional[str] = None
    val_every: int = 1
    threads: int = 0
    cache_data: bool = True
    max_steps_per_epoch: int = 0  # 0 = full epoch; small values for smoke tests
    freeze_bn: bool = False
    sync_bn: bool = False
    options: Dict[str, Any] = field(default_factory=dict)
    # Set every dropout probability to 0 (ablations; makes DDP and single-process runs comparable).
    no_dropout: bool = False
    # Leave cleanly (resumable) after this many epochs in this invocation; 0 = run to the end.
    stop_after: int = 0

    def resolved(self) -> "TrainConfig":
        """Fill unset hyper-parameters from the arch's paper recipe."""
        recipe = recipe_for(self.arch if self.arch in ("enet", "erfnet") else "espnet")
        cfg = TrainConfig(**asdict(self))
        for key in ("batch_size", "lr", "weight_decay", "weighting_c", "schedule"):
            if getattr(cfg, key) is None:
                setattr(cfg, key, recipe[key])
        if cfg.encoder_epochs is None:
            cfg.encoder_epochs = cfg.epochs
        if cfg.stages not in ("encoder", "decoder", "both"):
            raise ValueError("stages must be encoder, decoder or both")
        return cfg


class _AugmentedSet(Dataset):
    """Dataset view that augments and normalises; the generator depends on (seed, stage, epoch, index)."""

    def __init__(self, base: SegmentationDataset, augment: Optional[TrainAugment], norm: Normalization,
                 seed: int) -> None:
        self.base, self.augment, self.norm, self.seed = base, augment, norm, seed
        self.epoch = 0
        self.stage = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base.load(index)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.stage, self.epoch, index])
            image, label = self.augment(image, label, rng)
        x = normalize(image, self.norm.channel_order, self.norm.mean, self.norm.std, self.norm.scale)
        return torch.from_numpy(x), torch.from_numpy(label.astype(np.int64))


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
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.out = Path(self.cfg.out)
        if self.cfg.batch_size < 1 or self.cfg.batch_size % self.world:
            raise ValueError("--batch-size {} (the global batch) must be a positive multiple of the {} processes"
                             .format(self.cfg.batch_size, self.world))
        if self.cfg.sync_bn and self.world > 1 and self.device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA (SyncBatchNorm has no CPU kernels); on CPU use --freeze-bn or neither")

    # ----------------------------------------------------------------------------------- setup
    def _prepare_data(self) -> None:
        cfg = self.cfg
        self.train_set = build_dataset(cfg.dataset, cfg.data_root, "train", cache=cfg.cache_data)
        self.val_set = build_dataset(cfg.dataset, cfg.data_root, "val", cache=cfg.cache_data)
        # Fail before training on any bad file, listing the first offenders.
        self.train_set.check()
        self.val_set.check()
        self.spec = self.train_set.spec
        per_rank = len(self.train_set) // self.world
        if per_rank < cfg.batch_size // self.world:
            raise ValueError("training set {} has {} frames: too few for a global batch of {} ({} per process); "
                             "lower --batch-size".format(cfg.data_root, len(self.train_set), cfg.batch_size,
                                                         cfg.batch_size // self.world))
        stats_file = self.out / "dataset_stats.json"
        if stats_file.is_file():
            stats = json.loads(stats_file.read_text())
        else:
            mean, std = dataset_statistics(self.train_set)
            stats = {"mean": mean, "std": std}
            if self.is_main:
                _write_atomic(stats_file, json.dumps(stats))
        self.norm = Normalization(channel_order="rgb", mean=stats["mean"], std=stats["std"], scale=1.0)
        label_paths = [lab for _, lab in self.train_set.pairs]
        weights = cached_class_weights(cfg.class_weighting, label_paths, self.spec.num_classes,
                                       lambda i: self.train_set.load(i)[1], self.out.parent / ".class_weights",
                                       c=cfg.weighting_c)
        self.class_weights = torch.tensor(weights, device=self.device) if weights is not None else None
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
            init_model, _ = load_model(cfg.init)
            missing, unexpected = model.load_state_dict(init_model.state_dict(), strict=False)
            log.info("initialised from %s (%d missing, %d unexpected keys)", cfg.init, len(missing), len(unexpected))
        if cfg.sync_bn and self.world > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(self.device)
        if self.device.type == "cpu":
            # Measured here: channels_last halves ENet's CPU training step (0.8 s vs 1.4 s, batch 4).
            model = model.to(memory_format=torch.channels_last)
        return model

    def _stages(self) -> List[str]:
        return {"both": ["encoder", "decoder"], "encoder": ["encoder"], "decoder": ["decoder"]}[self.cfg.stages]

    def _stage_epochs(self, stage: str) -> int:
        return self.cfg.encoder_epochs if stage == "encoder" else self.cfg.epochs

    def _optimizer(self, model: nn.Module):
        cfg = self.cfg
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return opt

    def _scheduler(self, opt, stage: str):
        epochs = self._stage_epochs(stage)
        if self.cfg.schedule == "poly":
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: (1 - e / max(1, epochs)) ** 0.9)
        if self.cfg.schedule == "step":
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

    def _load_checkpoint(self) -> Optional[Dict[str, Any]]:
        path = self.out / CHECKPOINT
        if not path.is_file():
            return None
        # Our own checkpoint of tensors and plain Python values: weights_only keeps it unpickle-free.
        return torch.load(path, map_location=self.device, weights_only=True)

    # ---------------------------------------------------------------------------------- epochs
    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ignore = self.spec.ignore_index
        loss_sum = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=ignore, reduction="sum")
        valid = target != ignore
        if self.class_weights is not None:
            denom = self.class_weights[target.clamp(max=self.spec.num_classes - 1)][valid].sum()
        else:
            denom = valid.sum().to(logits.dtype)
        denom = denom.detach().clone()
        if self.world > 1:
            dist.all_reduce(denom)
        # DDP averages gradients over ranks, so scale by the world size to get sum / global count.
        return loss_sum * self.world / denom.clamp(min=1)

    def _train_epoch(self, model, loader, opt, scaler, stage: str, epoch: int) -> Tuple[float, int]:
        from tqdm import tqdm

        model.train()
        if self.cfg.freeze_bn:
            _freeze_batchnorm(model)
        total, shown, count, images = 0.0, 0.0, 0, 0
        steps = len(loader) if not self.cfg.max_steps_per_epoch else min(len(loader), self.cfg.max_steps_per_epoch)
        bar = tqdm(loader, total=steps, disable=not self.is_main, desc="{} {}".format(stage, epoch),
                   mininterval=10.0, dynamic_ncols=True)
        for step, (x, y) in enumerate(bar):
            if step >= steps:
                break
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.cfg.amp and self.device.type == "cuda"):
                out = model(x)
                if stage == "encoder":
                    # nearest-exact takes each output cell's centre pixel ("nearest" takes its corner).
                    y = F.interpolate(y[:, None].float(), size=out.shape[-2:], mode="nearest-exact")[:, 0].long()
                loss = self._loss(out.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            # Each rank's loss is its share of the global loss times the world size (see _loss).
            step_loss = float(loss.detach())
            total += step_loss / self.world
            shown += step_loss
            count += 1
            images += x.shape[0] * self.world
            bar.set_postfix(loss="{:.4f}".format(shown / count), lr="{:.2e}".format(opt.param_groups[0]["lr"]))
        if self.world > 1:
            summed = torch.tensor([total], dtype=torch.float64, device=self.device)
            dist.all_reduce(summed)
            total = float(summed)
        return total / max(1, count), images

    @torch.no_grad()
    def validate(self, model: nn.Module, stage: str) -> Dict[str, Any]:
        """Mean IoU etc. on the validation split (encoder stage: on labels at 1/stride)."""
        net = model.module if hasattr(model, "module") else model
        net.eval()
        cm = ConfusionMatrix(self.spec.num_classes, self.spec.ignore_index)
        for i in range(self.rank, len(self.val_set), self.world):
            image, label = self.val_set.load(i)
            image, label = _resize_pair(image, label, self.cfg.size)
            x = torch.from_numpy(normalize(image, self.norm.channel_order, self.norm.mean, self.norm.std,
                                           self.norm.scale))[None].to(self.device)
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            pred = net(x).argmax(1)[0].to(torch.uint8).cpu().numpy()
            if stage == "encoder":
                h, w = pred.shape
                import cv2

                label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
            cm.update(pred, label)
        if self.world > 1:
            m = torch.from_numpy(cm.matrix).to(self.device)
            dist.all_reduce(m)
            cm.matrix = m.cpu().numpy()
        return cm.summary(self.spec.class_names)

    # ------------------------------------------------------------------------------------- run
    def run(self) -> Dict[str, Any]:
        """Train every stage; returns the best validation metrics."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if not self.resume and (self.out / CHECKPOINT).is_file():
            raise ValueError("{} already holds a run ({}): pass --resume to continue it or choose another --out"
                             .format(self.out, CHECKPOINT))
        if self.resume and self.is_main:
            _warn_config_changes(self.out / "config.json", cfg)
        if self.is_main:
            _write_atomic(self.out / "config.json", json.dumps(asdict(cfg), indent=2))
        self._prepare_data()
        model = self._build_model()
        net = model
        ckpt = self._load_checkpoint() if self.resume else None
        if self.resume and ckpt is None and self.is_main:
            log.warning("--resume: no checkpoint in %s, starting from scratch", self.out)
        stages = self._stages()
        stage_index, start_epoch, best, train_time = 0, 0, {"miou": -1.0}, 0.0
        if ckpt is not None:
            net.load_state_dict(ckpt["model"])
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
        augment = TrainAugment(cfg.size, self.spec.ignore_index, tuple(cfg.scale_range),
                               crop_size=tuple(cfg.crop) if cfg.crop else None)
        data = _AugmentedSet(self.train_set, augment, self.norm, cfg.seed)
        sampler = DistributedSampler(data, num_replicas=self.world, rank=self.rank, shuffle=True, seed=cfg.seed,
                                     drop_last=True)
        # Workers start from a fork server, not by forking this process: by now it runs threads
        # (torch / OpenMP, and in a ROS or OpenVINO process theirs), and a forked copy of a
        # threaded process can crash (seen: SIGSEGV with OpenVINO and rclpy loaded). Workers
        # are not persistent so each epoch's copy of the dataset carries the new epoch number.
        loader = DataLoader(data, batch_size=cfg.batch_size // self.world, sampler=sampler, num_workers=cfg.workers,
                            pin_memory=self.device.type == "cuda", drop_last=True, persistent_workers=False,
                            multiprocessing_context="forkserver" if cfg.workers > 0 else None)
        csv_path = self.out / "log.csv"
        writer = _tensorboard(self.out / "tb") if self.is_main else None
        trained = 0  # epochs trained by this invocation (for stop_after)
        for si in range(stage_index, len(stages)):
            if cfg.stop_after and trained >= cfg.stop_after:
                if self.is_main:
                    log.info("stopping after %d epochs as asked (--stop-after); continue with --resume", trained)
                break
            stage = stages[si]
            net.encoder_only = stage == "encoder"
            data.stage = si
            opt = self._optimizer(model)
            sched = self._scheduler(opt, stage)
            scaler = torch.amp.GradScaler(enabled=cfg.amp and self.device.type == "cuda")
            first = start_epoch if si == stage_index else 0
            if ckpt is not None and si == stage_index and "optimizer" in ckpt:
                opt.load_state_dict(ckpt["optimizer"])
                sched.load_state_dict(ckpt["scheduler"])
                scaler.load_state_dict(ckpt["scaler"])
                torch.set_rng_state(ckpt["torch_rng"].cpu())
            for epoch in range(first, self._stage_epochs(stage)):
                if cfg.stop_after and trained >= cfg.stop_after:
                    if self.is_main:
                        log.info("stopping after %d epochs as asked (--stop-after); continue with --resume", trained)
                    break
                trained += 1
                sampler.set_epoch(epoch + 1000 * si)
                data.epoch = epoch
                t0 = time.time()
                loss, images = self._train_epoch(model, loader, opt, scaler, stage, epoch)
                seconds = time.time() - t0
                train_time += seconds
                lr = opt.param_groups[0]["lr"]
                metrics: Dict[str, Any] = {}
                last_epoch = epoch == self._stage_epochs(stage) - 1
                if (epoch + 1) % cfg.val_every == 0 or last_epoch:
                    metrics = self.validate(model, stage)
                if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    if metrics:
                        sched.step(metrics["miou"] or 0.0)
                else:
                    sched.step()
                improved = (stage == stages[-1] and metrics and (metrics["miou"] or 0) > best["miou"])
                if improved:
                    best = dict(metrics, epoch=epoch, stage=stage)
                    if self.is_main:
                        self._export_best(net, best, train_time)
                if self.is_main:
                    row = {"stage": stage, "epoch": epoch, "train_loss": round(loss, 5), "lr": lr,
                           "val_miou": metrics.get("miou"), "val_pixel_accuracy": metrics.get("pixel_accuracy"),
                           "epoch_seconds": round(seconds, 1), "images_per_second": round(images / max(seconds, 1e-9), 2)}
                    _append_csv(csv_path, row)
                    if writer is not None:
                        for key in ("train_loss", "lr", "val_miou", "images_per_second"):
                            if row[key] is not None:
                                writer.add_scalar("{}/{}".format(stage, key), row[key], epoch)
                    log.info("%s epoch %d: loss %.4f lr %.2e val mIoU %s (%.0f s)", stage, epoch, loss, lr,
                             "-" if not metrics else "{:.4f}".format(metrics["miou"] or 0), seconds)
                self._save_checkpoint({
                    "model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict(), "torch_rng": torch.get_rng_state(), "stage_index": si,
                    "epoch": epoch, "best": json.dumps(best), "train_time": train_time,
                })
            ckpt = None
        if writer is not None:
            writer.close()
        return best

    def _export_best(self, net: nn.Module, best: Dict[str, Any], train_time: float) -> None:
        cfg = self.cfg
        card = ModelCard.for_dataset(
            cfg.arch, self.spec, list(cfg.size), normalization=self.norm, options=dict(cfg.options),
            recipe={k: v for k, v in asdict(cfg).items() if k not in ("out", "data_root")},
            metrics={"split": "val", "stage": best["stage"], "epoch": best["epoch"],
                     "train_time_s": round(train_time, 1),
                     "val_miou": best["miou"], "val_pixel_accuracy": best["pixel_accuracy"],
                     "val_mean_class_accuracy": best["mean_class_accuracy"], "val_class_iou": best["class_iou"],
                     "params": count_parameters(net)},
            source="trained with enet_seg_ros (enet-seg train)",
        )
        was = net.encoder_only
        net.encoder_only = False
        save_model(self.out / BEST, net, card)
        net.encoder_only = was


def _resize_pair(image: np.ndarray, label: np.ndarray, size: Tuple[int, int]):
    """Bring a validation frame to the model input size (labels nearest, as at inference)."""
    import cv2

    w, h = int(size[0]), int(size[1])
    if image.shape[1] == w and image.shape[0] == h:
        return image, label
    return (cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR),
            cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST_EXACT))


def _trim_log(path: Path, stages: List[str], stage_index: int, epoch: int) -> None:
    """Drop log rows after (``stage_index``, ``epoch``), the last checkpointed epoch."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if r.get("stage") in stages
            and (stages.index(r["stage"]), int(r["epoch"])) <= (stage_index, epoch)]
    if len(keep) == len(rows) or not rows:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)


def _warn_config_changes(path: Path, cfg: TrainConfig) -> None:
    """On --resume, say which settings differ from the run's saved config.json."""
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return
    new = json.loads(json.dumps(asdict(cfg)))  # tuples -> lists, as saved
    changed = sorted(k for k in new if k in old and old[k] != new[k] and k != "stop_after")
    if changed:
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
