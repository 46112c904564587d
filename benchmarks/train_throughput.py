#!/usr/bin/env python3
"""CPU training throughput (images/s) of two checkouts side by side, per architecture.

Each measurement is a real ``enet-seg train`` run (decoder stage, the recipe's batch, the
shipped models' 240x240 crop of 480x360 frames, ``--threads 2``) on a CamVid subset of exactly
``steps x batch`` frames, so every epoch after the first sees only frames the old trainer has
already decoded and cached: the number is the steady-state rate of the training loop (data
preparation + forward + backward + optimiser step), read from the run's ``log.csv`` (epochs
after the first). The checkouts alternate (A, B, A, B, ...) so a noisy, shared machine
affects both alike; medians are reported.

``--mode steps`` (in one process, robust to a shared machine's load swings): the training step
of the baseline trainer (per-sample numpy/OpenCV ``TrainAugment`` + ``normalize`` of cached
decoded frames, collate, fp32 forward/backward/Adam; what ``main``'s trainer ran per step with
``--workers 0``) and the step of this trainer (``BatchAugment`` on the frame store, bf16
autocast where the CPU has AMX / AVX512-BF16), on two copies of the network, alternating step
by step; median step times. The baseline uses ``channels_last`` and the default Adam (as
``main``'s trainer did); the new step takes the trainer's per-arch settings
(``enet_seg_ros.train.speed``: memory format, fused Adam, and ``torch.compile`` as ``--compile
auto`` decides for a full-length run, or as ``--compile on|off`` says; the compile happens in the
untimed warm-up step and its wall time is recorded). Not its glibc malloc setting: that is
process-wide and would change the baseline's allocator too.

Usage (from the repo root)::

    python3 benchmarks/train_throughput.py --before /work/main --after . \\
        --data ../shared/data/camvid --reps 3 --out benchmarks/train_throughput_cpu.json
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

BATCH = {"enet": 10, "espnet": 12, "erfnet": 6}  # the papers' (and the shipped runs') batches


def subset(data: Path, root: Path, n_train: int, n_val: int) -> Path:
    """CamVid layout with the first ``n_train`` / ``n_val`` frames (symlinks)."""
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / (split + "annot")).mkdir(parents=True, exist_ok=True)
        for image in sorted((data / split).iterdir())[:n]:
            (root / split / image.name).symlink_to(image)
            label = data / (split + "annot") / (image.stem + ".png")
            (root / (split + "annot") / label.name).symlink_to(label)
    return root


def run_once(checkout: Path, arch: str, root: Path, out: Path, args: argparse.Namespace, extra: List[str]) -> Dict:
    """One training run; returns images/s per epoch (after the first) and the wall time."""
    env = dict(os.environ, PYTHONPATH=str(checkout), OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, "-m", "enet_seg_ros.cli", "train", "--arch", arch, "--dataset", "camvid",
           "--data-root", str(root), "--out", str(out), "--size", "480x360", "--crop", args.crop,
           "--stages", "decoder", "--epochs", str(args.epochs), "--max-steps-per-epoch", str(args.steps),
           "--threads", str(args.threads), "--val-every", "1000", *extra]
    t0 = time.time()
    # cwd = the checkout: ``python -m`` puts the working directory ahead of PYTHONPATH.
    proc = subprocess.run(cmd, env=env, cwd=str(checkout), capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode:
        raise RuntimeError("{} failed:\n{}".format(" ".join(cmd), proc.stderr[-3000:]))
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rates = [float(r["images_per_second"]) for r in rows[1:]]
    card = json.loads((out / "best.card.json").read_text()) if (out / "best.card.json").is_file() else {}
    return {"images_per_second": rates, "median": statistics.median(rates), "wall_s": round(wall, 1),
            "precision": card.get("metrics", {}).get("precision", "fp32 (no precision option)"),
            "load_average": os.getloadavg()}


def steps_ab(args: argparse.Namespace) -> int:
    """In-process A/B of the baseline and the new training step, interleaved step by step."""
    sys.path.insert(0, str(Path(args.after).resolve()))
    import numpy as np
    import torch
    import torch.nn.functional as F

    from enet_seg_ros.bench.machine import cpu_flags, cpu_model
    from enet_seg_ros.data.datasets import SegmentationDataset, build_dataset
    from enet_seg_ros.data.device_augment import BatchAugment, FrameStore, normalize_batch
    from enet_seg_ros.data.transforms import TrainAugment, normalize
    from enet_seg_ros.nets import build_model
    from enet_seg_ros.train.trainer import effective_precision

    try:  # this trainer's per-arch settings (older checkouts as --after have none)
        from enet_seg_ros.train import speed
    except ImportError:
        speed = None

    torch.set_num_threads(args.threads)
    crop = tuple(int(v) for v in args.crop.split("x"))
    size = (480, 360)
    mean, std = [110.0, 108.0, 105.0], [72.0, 72.0, 70.0]
    precision = effective_precision("auto", torch.device("cpu"))
    result = {"mode": "steps", "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "cpu": cpu_model(),
              "cpu_flags": cpu_flags(), "nproc": os.cpu_count(), "torch": torch.__version__,
              "threads": args.threads, "crop": args.crop, "size": "480x360", "batch": BATCH,
              "new_precision": precision, "load_average_start": os.getloadavg(), "archs": {}}
    # No speed.keep_freed_memory() here: it is process-wide and would also change the baseline's
    # allocator, which main's trainer never had (the new trainer's ~5 % from it is not counted).
    result["malloc_keeps_freed_memory"] = False
    full = build_dataset("camvid", Path(args.data).resolve(), "train", cache=True)
    for arch in args.archs.split(","):
        b = BATCH[arch]
        ds = SegmentationDataset(full.pairs[:4 * b], full.spec, cache=True)
        store = FrameStore(ds, size, torch.device("cpu"))
        torch.manual_seed(0)
        nets = {k: build_model(arch, 11).to(memory_format=torch.channels_last).train() for k in ("before", "after")}
        opts = {k: torch.optim.Adam(m.parameters(), lr=5e-4, weight_decay=2e-4) for k, m in nets.items()}
        fmt, scope, why = torch.channels_last, "off", "no speed module"

        def loss_of(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(out.float(), y, ignore_index=11)

        def forward_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = nets["after"](x)
            return loss_of(out, y)

        if speed is not None:
            fmt = speed.memory_format_for(arch, torch.device("cpu"))
            nets["after"] = nets["after"].to(memory_format=fmt)
            opts["after"] = speed.adam(nets["after"].parameters(), lr=5e-4, weight_decay=2e-4)
            setting = {"auto": None, "on": True, "off": False}[args.compile]
            # auto decides as for a full-length run (far more steps than this benchmark times).
            scope, why = speed.compile_decision(setting, arch, torch.device("cpu"), 10 ** 6)
        # As the trainer: forward and loss compiled as one graph (scope step), or the loss only.
        step_loss = torch.compile(forward_loss) if scope == "step" else forward_loss
        if scope == "loss":
            loss_of = torch.compile(loss_of)
        old_aug = TrainAugment(size, 11, (0.75, 1.5), crop_size=crop)
        new_aug = BatchAugment(size, 11, (0.75, 1.5), crop_size=crop)

        def before(step: int) -> None:
            xs, ys = [], []
            for j in range(b):
                i = (step * b + j) % len(ds)
                image, label = ds.load(i)
                image, label = old_aug(image, label, np.random.default_rng([0, 0, step, i]))
                xs.append(torch.from_numpy(normalize(image, "rgb", mean, std)))
                ys.append(torch.from_numpy(label.astype(np.int64)))
            x = torch.stack(xs).contiguous(memory_format=torch.channels_last)
            out = nets["before"](x)
            loss = F.cross_entropy(out.float(), torch.stack(ys), ignore_index=11)
            opts["before"].zero_grad(set_to_none=True)
            loss.backward()
            opts["before"].step()

        def after(step: int) -> None:
            idx = [(step * b + j) % len(ds) for j in range(b)]
            params = [new_aug.draw(np.random.default_rng([0, 0, step, i])) for i in idx]
            t = torch.as_tensor(idx)
            x, y = new_aug(store.images[t], store.labels[t], params)
            x = normalize_batch(x, "rgb", mean, std).contiguous(memory_format=fmt)
            loss = step_loss(x, y)
            opts["after"].zero_grad(set_to_none=True)
            loss.backward()
            opts["after"].step()

        times: Dict[str, List[float]] = {"before": [], "after": []}
        warmup: Dict[str, float] = {}
        for step in range(args.steps_ab + 1):
            for name, fn in (("before", before), ("after", after)) if step % 2 == 0 else (("after", after), ("before", before)):
                t0 = time.perf_counter()
                fn(step)
                if step:  # step 0 warms up (oneDNN kernel selection, allocator, the compile)
                    times[name].append(time.perf_counter() - t0)
                else:
                    warmup[name] = round(time.perf_counter() - t0, 1)
        med = {k: statistics.median(v) for k, v in times.items()}
        result["archs"][arch] = {
            "before_step_s": [round(t, 3) for t in times["before"]], "after_step_s": [round(t, 3) for t in times["after"]],
            "before_images_per_second": round(b / med["before"], 2), "after_images_per_second": round(b / med["after"], 2),
            "speedup": round(med["before"] / med["after"], 2), "warmup_step_s": warmup,
            "after_settings": {"memory_format": str(fmt).replace("torch.", ""),
                               "adam_fused": bool(opts["after"].defaults.get("fused")),
                               "compile_scope": scope, "compile_why": why}}
        print("{}: before {:.2f}, after {:.2f} images/s (median of {} interleaved steps): x{:.2f}".format(
            arch, b / med["before"], b / med["after"], args.steps_ab, med["before"] / med["after"]), flush=True)
    result["load_average_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", required=True, help="checkout of the baseline (e.g. /work/main)")
    p.add_argument("--after", required=True, help="checkout to compare (e.g. .)")
    p.add_argument("--data", required=True, help="CamVid root (SegNet layout)")
    p.add_argument("--archs", default="enet,espnet,erfnet")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is not counted)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--crop", default="240x240")
    p.add_argument("--after-args", default="", help="extra train flags for --after (e.g. '--compile')")
    p.add_argument("--out", required=True, help="JSON result file")
    p.add_argument("--mode", choices=["runs", "steps"], default="runs",
                   help="runs: whole train runs of both checkouts; steps: in-process step A/B (see above)")
    p.add_argument("--steps-ab", type=int, default=8, help="--mode steps: timed steps per side")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="--mode steps: torch.compile of the new step (auto: as the trainer decides for a long run)")
    args = p.parse_args()
    if args.mode == "steps":
        return steps_ab(args)
    sys.path.insert(0, str(Path(args.after).resolve()))
    from enet_seg_ros.bench.machine import cpu_flags, cpu_model  # noqa: E402

    import torch

    result = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "cpu": cpu_model(), "cpu_flags": cpu_flags(),
              "nproc": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
              "load_average_start": os.getloadavg(),
              "setup": {"size": "480x360", "crop": args.crop, "threads": args.threads, "steps_per_epoch": args.steps,
                        "epochs": args.epochs, "batch": BATCH, "after_args": args.after_args,
                        "counted": "images/s of epochs 2..N from log.csv (epoch 1 decodes and warms up)"},
              "archs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for arch in args.archs.split(","):
            root = subset(Path(args.data).resolve(), tmp / "data_{}".format(arch), args.steps * BATCH[arch], 2)
            runs: Dict[str, List[Dict]] = {"before": [], "after": []}
            for rep in range(args.reps):
                for name, checkout, extra in (("before", args.before, []), ("after", args.after, args.after_args.split())):
                    out = tmp / "{}_{}_{}".format(arch, name, rep)
                    r = run_once(Path(checkout).resolve(), arch, root, out, args, extra)
                    runs[name].append(r)
                    print("{} {} rep {}: {:.2f} images/s (epochs {}), {:.0f} s".format(
                        arch, name, rep, r["median"], r["images_per_second"], r["wall_s"]), flush=True)
            before = statistics.median(r["median"] for r in runs["before"])
            after = statistics.median(r["median"] for r in runs["after"])
            result["archs"][arch] = {"before": runs["before"], "after": runs["after"],
                                     "before_median": round(before, 2), "after_median": round(after, 2),
                                     "speedup": round(after / before, 2)}
            print("{}: before {:.2f}, after {:.2f} images/s: x{:.2f}".format(arch, before, after, after / before),
                  flush=True)
    result["load_average_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
