"""Evaluation throughput vs bare inference, interleaved so machine-load drift cancels.

    .venv/bin/python benchmarks/eval_throughput.py --images ../shared/data/camvid/val \
        --labels ../shared/data/camvid/valannot --weights models/enet_camvid.safetensors
    .venv/bin/python benchmarks/eval_throughput.py --bag camvid_val_bag --weights models/enet_camvid.safetensors

Each of ``--rounds`` rounds times one full pass of the bare model over every frame (decoded in
memory beforehand: ``Segmenter.segment`` only) and one full evaluation pass (``eval-dir`` or
``eval-bag`` pipeline: reading + decoding on worker threads, inference, scoring on its own
thread), alternating which goes first. Reported: frames / seconds of each mode summed over the
rounds, their ratio, the per-round ratios (their spread shows how noisy the machine is), and
the mean time per frame the inference thread waited for decoded frames (0 = the pipeline
always had the next frame ready, so only CPU contention can slow evaluation down).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="camvid", choices=("camvid", "cityscapes"))
    parser.add_argument("--images", type=Path, help="labelled folder (with --labels) ...")
    parser.add_argument("--labels", type=Path)
    parser.add_argument("--bag", type=Path, help="... or a bag made by enet-seg make-bag")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="backend CPU threads")
    parser.add_argument("--workers", type=int, default=2, help="decode threads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args()
    if (args.bag is None) == (args.images is None or args.labels is None):
        parser.error("give --images and --labels, or --bag")

    from enet_seg_ros.evaluate import make_evaluator
    from enet_seg_ros.evaluate.model import load_for_dataset
    from enet_seg_ros.evaluate.pipeline import EvalPipeline, bare_throughput

    model = load_for_dataset(args.weights, args.dataset, args.backend, threads=args.threads)
    source = _BagSource(args.bag) if args.bag else _FolderSource(args.dataset, args.images, args.labels)
    images = source.decoded()
    waits = []

    def bare() -> float:
        return len(images) / bare_throughput(model.segmenter, [p for p, _ in images], images[0][1])

    def full() -> float:
        pipeline = EvalPipeline(model.segmenter, make_evaluator(model.spec), model.pred_lut, spec=model.spec)
        start = time.perf_counter()
        stats = source.run(pipeline, args.workers)
        elapsed = time.perf_counter() - start
        waits.append(1000.0 * (elapsed - sum(stats.latencies_ms) / 1000.0) / max(1, stats.segmented))
        return elapsed

    bare_s = eval_s = 0.0
    ratios = []
    for r in range(args.rounds):
        tb, te = (bare(), full()) if r % 2 == 0 else tuple(reversed((full(), bare())))
        bare_s, eval_s = bare_s + tb, eval_s + te
        ratios.append(tb / te)
        print("round {}: bare {:.2f} fps, eval {:.2f} fps, ratio {:.3f}".format(
            r + 1, len(images) / tb, len(images) / te, ratios[-1]), flush=True)
    n = len(images) * args.rounds
    result = {
        "source": str(args.bag or args.images), "frames_per_pass": len(images), "rounds": args.rounds,
        "backend": model.segmenter.backend_name, "model": model.description, "threads": args.threads,
        "workers": args.workers, "bare_fps": n / bare_s, "eval_fps": n / eval_s, "ratio": bare_s / eval_s,
        "round_ratios": ratios, "median_round_ratio": statistics.median(ratios),
        "inference_thread_idle_ms_per_frame": statistics.median(waits),
        "machine": "{} ({} CPUs, load average {:.1f})".format(
            platform.processor() or platform.machine(), os.cpu_count(), os.getloadavg()[0]),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


class _FolderSource:
    def __init__(self, dataset: str, images: Path, labels: Path) -> None:
        from enet_seg_ros.evaluate.folders import find_labelled_frames

        self.dataset = dataset
        self.frames, _ = find_labelled_frames(dataset, images, labels)

    def decoded(self):
        from enet_seg_ros.evaluate.folders import read_bgr

        return [(read_bgr(f.image_path), "bgr") for f in self.frames]

    def run(self, pipeline, workers: int):
        from enet_seg_ros.evaluate.frames import folder_jobs

        return pipeline.run(folder_jobs(self.frames, self.dataset == "cityscapes"), progress=False, workers=workers)


class _BagSource:
    def __init__(self, path: Path) -> None:
        self.path = path

    def decoded(self):
        from enet_seg_ros.io.bags import BagReader, decode_frame

        with BagReader(self.path) as bag:
            topic = bag.find_image_topic().topic
            return [decode_frame(m.msg, m.msgtype) for m in bag.messages([topic])]

    def run(self, pipeline, workers: int):
        from enet_seg_ros.io.bags import BagReader
        from enet_seg_ros.evaluate.frames import BagFrames

        with BagReader(self.path) as bag:
            image = bag.find_image_topic()
            frames = BagFrames(bag, image.topic, image.msgtype, gt_topic="/camera/labels_gt",
                               instances_topic="/camera/instances_gt" if "/camera/instances_gt" in bag.topics else None)
            return pipeline.run(frames, progress=False, workers=workers)


if __name__ == "__main__":
    raise SystemExit(main())
