"""Evaluation throughput vs bare inference, interleaved so machine-load drift cancels.

    enet-seg bench eval --images ../shared/data/camvid/val --labels ../shared/data/camvid/valannot \\
        --weights models/enet_camvid.safetensors
    enet-seg bench eval --bag camvid_val_bag --weights models/enet_camvid.safetensors

Each of ``rounds`` rounds times one full pass of the bare model over every frame (decoded in
memory beforehand: ``Segmenter.segment`` only) and one full evaluation pass (``eval-dir`` or
``eval-bag`` pipeline: reading + decoding on worker threads, inference, scoring on its own
thread), alternating which goes first. Reported: frames / seconds of each mode summed over the
rounds, their ratio, the per-round ratios (their spread shows how noisy the machine is), and
the mean time per frame the inference thread waited for decoded frames (0 = the pipeline
always had the next frame ready, so only CPU contention can slow evaluation down).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..evaluate import make_evaluator
from ..evaluate.folders import find_labelled_frames, read_bgr
from ..evaluate.frames import BagFrames, folder_jobs
from ..evaluate.model import load_for_dataset
from ..evaluate.pipeline import EvalPipeline, EvalStats, bare_throughput
from ..io.bags import BagReader, decode_frame
from ..io.topics import INSTANCES_TOPIC, LABELS_TOPIC
from .machine import machine_line


class _FolderFrames:
    def __init__(self, dataset: str, images: Path, labels: Path) -> None:
        self.dataset = dataset
        self.frames, _ = find_labelled_frames(dataset, images, labels)

    def decoded(self) -> List[Tuple[np.ndarray, str]]:
        return [(read_bgr(f.image_path), "bgr") for f in self.frames]

    def run(self, pipeline: EvalPipeline, workers: int) -> EvalStats:
        return pipeline.run(folder_jobs(self.frames, self.dataset == "cityscapes"), progress=False, workers=workers)


class _BagFrames:
    def __init__(self, path: Path) -> None:
        self.path = path

    def decoded(self) -> List[Tuple[np.ndarray, str]]:
        with BagReader(self.path) as bag:
            topic = bag.find_image_topic().topic
            return [decode_frame(m.msg, m.msgtype) for m in bag.messages([topic])]

    def run(self, pipeline: EvalPipeline, workers: int) -> EvalStats:
        with BagReader(self.path) as bag:
            image = bag.find_image_topic()
            frames = BagFrames(bag, image.topic, image.msgtype, gt_topic=LABELS_TOPIC,
                               instances_topic=INSTANCES_TOPIC if INSTANCES_TOPIC in bag.topics else None)
            return pipeline.run(frames, progress=False, workers=workers)


def bench_eval(weights: str, *, dataset: str = "camvid", images: Optional[Path] = None,
               labels: Optional[Path] = None, bag: Optional[Path] = None, backend: str = "auto",
               threads: Optional[int] = None, workers: int = 2, rounds: int = 3) -> Dict[str, Any]:
    """Bare inference vs the evaluation pipeline on a labelled folder (``images`` + ``labels``) or a bag."""
    if (bag is None) == (images is None or labels is None):
        raise ValueError("give --images and --labels, or --bag")
    model = load_for_dataset(weights, dataset, backend, threads=threads)
    source = _BagFrames(bag) if bag else _FolderFrames(dataset, images, labels)
    frames = source.decoded()
    waits = []

    def bare() -> float:
        return len(frames) / bare_throughput(model.segmenter, [p for p, _ in frames], frames[0][1])

    def full() -> float:
        pipeline = EvalPipeline(model.segmenter, make_evaluator(model.spec), model.pred_lut, spec=model.spec)
        start = time.perf_counter()
        stats = source.run(pipeline, workers)
        elapsed = time.perf_counter() - start
        waits.append(1000.0 * (elapsed - sum(stats.latencies_ms) / 1000.0) / max(1, stats.segmented))
        return elapsed

    bare_s = eval_s = 0.0
    ratios = []
    for r in range(rounds):
        tb, te = (bare(), full()) if r % 2 == 0 else tuple(reversed((full(), bare())))
        bare_s, eval_s = bare_s + tb, eval_s + te
        ratios.append(tb / te)
        print("round {}: bare {:.2f} fps, eval {:.2f} fps, ratio {:.3f}".format(
            r + 1, len(frames) / tb, len(frames) / te, ratios[-1]), flush=True)
    n = len(frames) * rounds
    return {
        "source": str(bag or images), "frames_per_pass": len(frames), "rounds": rounds,
        "backend": model.segmenter.backend_name, "model": model.description, "threads": threads,
        "workers": workers, "bare_fps": n / bare_s, "eval_fps": n / eval_s, "ratio": bare_s / eval_s,
        "round_ratios": ratios, "median_round_ratio": statistics.median(ratios),
        "inference_thread_idle_ms_per_frame": statistics.median(waits),
        "machine": machine_line(), "date": time.strftime("%Y-%m-%d"),
    }
