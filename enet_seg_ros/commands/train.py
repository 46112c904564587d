"""``enet-seg train``: train ENet / ERFNet / ESPNet with the papers' recipes (torchrun for multi-GPU)."""
from __future__ import annotations

import argparse
import os


def _size(text: str):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError("size must be WxH, e.g. 480x360") from None
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError("size must be at least 8x8")
    return w, h


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the train flags."""
    p.add_argument("--arch", required=True, choices=["enet", "erfnet", "espnet"])
    p.add_argument("--dataset", required=True, choices=["cityscapes", "camvid"])
    p.add_argument("--data-root", required=True, help="dataset root (CamVid SegNet layout or Cityscapes)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, logs, best weights)")
    p.add_argument("--size", type=_size, default=(480, 360), help="model input size WxH (default 480x360)")
    p.add_argument("--crop", type=_size, default=None, help="training crop WxH (default: --size)")
    p.add_argument("--epochs", type=int, default=100, help="epochs of the full network (decoder stage)")
    p.add_argument("--encoder-epochs", type=int, default=None, help="epochs of the encoder stage (default: --epochs)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (default: the paper's)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 5e-4)")
    p.add_argument("--weight-decay", type=float, default=None, help="default 2e-4 (ENet/ERFNet), 5e-4 (ESPNet)")
    p.add_argument("--class-weighting", choices=["enet", "median_freq", "none"], default="enet")
    p.add_argument("--weighting-c", type=float, default=None, help="c in 1/ln(c + p) (default 1.02 ENet, 1.10 others)")
    p.add_argument("--stages", choices=["encoder", "decoder", "both"], default="both")
    p.add_argument("--schedule", choices=["poly", "step", "plateau"], default=None)
    p.add_argument("--scale-range", type=float, nargs=2, default=(0.75, 1.5), metavar=("MIN", "MAX"))
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None, help="initialise from a weights file (.safetensors)")
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--max-steps-per-epoch", type=int, default=0, help="cap steps per epoch (smoke tests)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (CUDA)")
    p.add_argument("--freeze-bn", action="store_true", help="keep BatchNorm statistics fixed (fine-tuning)")
    p.add_argument("--no-cache", action="store_true", help="do not keep decoded frames in memory")
    p.add_argument("--no-dropout", action="store_true",
                   help="set every dropout probability to 0 (ablations; with --freeze-bn, a multi-process run "
                        "matches a single-process one up to float rounding)")
    p.add_argument("--stop-after", type=int, default=0, metavar="EPOCHS",
                   help="leave after this many epochs in this invocation (resumable with --resume; 0 = no limit)")


def run(args: argparse.Namespace) -> int:
    """Train; with torchrun each process runs this and rank 0 logs and checkpoints."""
    from ..train.trainer import TrainConfig, main_worker

    config = TrainConfig(
        arch=args.arch, dataset=args.dataset, data_root=args.data_root, out=args.out, size=tuple(args.size), crop=tuple(args.crop) if args.crop else None,
        epochs=args.epochs, encoder_epochs=args.encoder_epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, class_weighting=args.class_weighting, weighting_c=args.weighting_c,
        stages=args.stages, schedule=args.schedule, scale_range=tuple(args.scale_range), workers=args.workers,
        amp=args.amp, seed=args.seed, init=args.init, val_every=args.val_every, threads=args.threads,
        cache_data=not args.no_cache, max_steps_per_epoch=args.max_steps_per_epoch, sync_bn=args.sync_bn,
        freeze_bn=args.freeze_bn, no_dropout=args.no_dropout, stop_after=args.stop_after,
    )
    best = main_worker(config, resume=args.resume)
    # Under torchrun every process returns here; only rank 0 reports.
    if os.environ.get("RANK", "0") == "0" and best.get("miou", -1) >= 0:
        print("best val mIoU {:.4f} at {} epoch {}".format(best["miou"], best["stage"], best["epoch"]))
    return 0
