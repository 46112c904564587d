"""The evaluation API: score a labelled folder, a ROS 2 bag or prediction PNGs, write the report.

Each call returns an :class:`Evaluation` (metrics, run statistics, report paths) and writes
metrics.json, report.md, confusion.png and class_iou.png into ``out``; the ``eval-dir``,
``eval-bag`` and ``eval-preds`` commands only parse their flags, call one of these and print
:meth:`Evaluation.summary`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..data.transforms import check_lighting
from ..io.bags import BagReader, format_stamp
from ..io.topics import IMAGE_TYPE, IMAGE_TYPES, INSTANCES_TOPIC, LABELS_TOPIC
from . import make_evaluator
from .folders import find_labelled_frames, read_bgr
from .frames import BagFrames, folder_jobs, measure_bare, read_index
from .model import load_for_dataset
from .pipeline import (THROUGHPUT_FRAMES, EvalPipeline, EvalStats, bare_throughput, record_throughput,
                       throughput_line, write_outputs)
from .predictions import score_predictions
from .report import summary_line, write_evaluation

LOG = logging.getLogger(__name__)
PathLike = Union[str, Path]

DEFAULT_GT_TOPIC = LABELS_TOPIC
DEFAULT_INSTANCES_TOPIC = INSTANCES_TOPIC


@dataclass
class ModelOptions:
    """How to build the segmenter (``weights`` None: the shipped default model)."""

    weights: Optional[str] = None
    backend: str = "auto"
    device: Optional[str] = None
    input_size: Optional[Tuple[int, int]] = None
    threads: Optional[int] = None
    strict: bool = False  # an explicit backend that cannot start is an error, not a fallback


@dataclass
class RunOptions:
    """How to run the pipeline: ground-truth resizing, saved predictions, throughput, threads."""

    resize_gt: Optional[str] = None
    save_predictions: bool = False
    throughput: bool = False
    workers: int = 2
    progress: bool = True
    lighting: Optional[Tuple[str, float]] = None  # (kind, factor): every image shifted so (eval-dir --lighting)


@dataclass
class Evaluation:
    """What an evaluation produced: ``result`` (the metrics), ``stats`` and the report ``paths``."""

    result: Dict[str, Any]
    paths: Dict[str, Path]
    stats: Optional[EvalStats] = None
    notes: List[str] = field(default_factory=list)

    @property
    def report(self) -> Path:
        return self.paths["report"]

    def summary(self) -> List[str]:
        """The lines the commands print: throughput (when measured), headline numbers, report path."""
        lines = []
        if self.stats is None:
            lines.append(summary_line(self.result))
        else:
            line = throughput_line(self.stats)
            if line:
                lines.append(line)
            lines.append(summary_line(self.result, scored=self.stats.scored, without_gt=self.stats.without_gt,
                                      skipped=self.stats.skipped_count, fps=self.stats.fps))
        lines.append("report: {}".format(self.report))
        return lines


def evaluate_folder(dataset: str, images: PathLike, labels: PathLike, out: PathLike,
                    model: ModelOptions = ModelOptions(), run: RunOptions = RunOptions(),
                    with_instances: bool = True) -> Evaluation:
    """Segment and score a labelled folder (CamVid or Cityscapes layout)."""
    images, labels, out = Path(images), Path(labels), Path(out)
    if run.lighting is not None:
        run = replace(run, lighting=check_lighting(*run.lighting))  # a bad shift fails before any frame
    frames, orphans = find_labelled_frames(dataset, images, labels)
    loaded = load_for_dataset(model.weights, dataset, model.backend, model.input_size, model.device, model.threads,
                              strict=model.strict)
    with_instances = dataset == "cityscapes" and with_instances
    evaluator = make_evaluator(loaded.spec)
    pipeline = EvalPipeline(loaded.segmenter, evaluator, loaded.pred_lut, spec=loaded.spec, resize_gt=run.resize_gt,
                            save_dir=out / "predictions" if run.save_predictions else None)
    decoded = [read_bgr(f.image_path) for f in frames[:THROUGHPUT_FRAMES]] if run.throughput else []
    # Bare inference timed before and after the evaluation, so load drifts on the machine cancel.
    bare = [bare_throughput(loaded.segmenter, decoded, "bgr")] if decoded else []
    stats = pipeline.run(folder_jobs(frames, with_instances, run.lighting), total=len(frames), desc="eval-dir",
                         progress=run.progress, workers=run.workers)
    if run.lighting is not None:
        stats.extra["lighting"] = {"kind": run.lighting[0], "factor": run.lighting[1]}
        stats.notes.append("input lighting changed before inference: {} x{:g} (a robustness run, not the "
                           "frames as recorded)".format(*run.lighting))
    if decoded:
        bare.append(bare_throughput(loaded.segmenter, decoded, "bgr"))
        del decoded
    if stats.scored == 0:
        raise ValueError("no frame under {} could be scored ({} skipped)".format(images, stats.skipped_count))
    if orphans:
        stats.notes.append("{} label file(s) match no image (not scored), e.g. {}".format(len(orphans), orphans[0]))
        LOG.warning(stats.notes[-1])
    if with_instances and 0 < evaluator.instance_frames < evaluator.frames:
        stats.notes.append("instance files exist for only {} of {} frames: iIoU not reported".format(
            evaluator.instance_frames, evaluator.frames))
    if bare:
        record_throughput(stats, bare, min(len(frames), THROUGHPUT_FRAMES))
    paths = write_outputs(out, evaluator, stats, model=loaded.description,
                          backend=str(loaded.segmenter.backend_name),
                          inputs={"images": images.resolve(), "labels": labels.resolve()},
                          title="Folder evaluation ({})".format(dataset))
    return Evaluation(evaluator.result(), paths, stats)


def evaluate_bag(bag_path: PathLike, out: PathLike, model: ModelOptions = ModelOptions(),
                 run: RunOptions = RunOptions(), *, dataset: Optional[str] = None, image_topic: Optional[str] = None,
                 gt_topic: Optional[str] = None, instances_topic: Optional[str] = None,
                 labels: Optional[PathLike] = None, index: Optional[PathLike] = None,
                 with_instances: bool = True) -> Evaluation:
    """Segment a bag's camera frames and score them against ground truth with the same header stamp.

    Ground truth comes from ``gt_topic`` (default ``/camera/labels_gt``) or from ``labels`` +
    ``index`` (rows ``stamp_ns,label_path[,instance_path]``); errors name bag, topic and stamp.
    """
    out = Path(out)
    use_index = labels is not None or index is not None
    if use_index and (labels is None or index is None):
        raise ValueError("--labels and --index go together (label folder + stamp_ns,label_path CSV)")
    if use_index and gt_topic:
        raise ValueError("give either --gt-topic or --labels/--index, not both")
    rows = read_index(Path(index), Path(labels)) if use_index else None

    with BagReader(bag_path) as bag:
        # Check the topics before loading the model: a wrong topic fails in a second.
        image = bag.require(image_topic, IMAGE_TYPES, "image topic") if image_topic else bag.find_image_topic()
        inst_topic = None
        if not use_index:
            gt_topic = bag.require(gt_topic or DEFAULT_GT_TOPIC, (IMAGE_TYPE,), "ground-truth topic").topic
            if gt_topic == image.topic:
                raise ValueError("{} is given as both the image and the ground-truth topic".format(gt_topic))
            if instances_topic and with_instances:
                inst_topic = bag.require(instances_topic, (IMAGE_TYPE,), "instance topic").topic
            elif with_instances and DEFAULT_INSTANCES_TOPIC in bag.topics:
                inst_topic = DEFAULT_INSTANCES_TOPIC
        loaded = load_for_dataset(model.weights, dataset, model.backend, model.input_size, model.device,
                                  model.threads, strict=model.strict)
        with_instances = loaded.spec.dataset == "cityscapes" and with_instances
        if inst_topic and not with_instances:
            LOG.info("%s present but %s has no instance metrics: not read", inst_topic, loaded.spec.dataset)
        evaluator = make_evaluator(loaded.spec)
        pipeline = EvalPipeline(loaded.segmenter, evaluator, loaded.pred_lut, spec=loaded.spec,
                                resize_gt=run.resize_gt, save_dir=out / "predictions" if run.save_predictions else None)
        frames = BagFrames(bag, image.topic, image.msgtype, gt_topic=gt_topic,
                           instances_topic=inst_topic if with_instances else None, index=rows,
                           with_instances=with_instances)
        # Bare inference timed before and after the evaluation, so load drifts on the machine cancel.
        bare = [measure_bare(bag, image, loaded.segmenter)] if run.throughput else []
        stats = pipeline.run(frames, total=image.count, desc="eval-bag", progress=run.progress, workers=run.workers)
        if bare:
            bare.append(measure_bare(bag, image, loaded.segmenter))

    if stats.segmented == 0:
        raise ValueError("no frame of {} topic {} could be decoded ({} skipped); nothing to score".format(
            bag_path, image.topic, stats.skipped_count))
    if stats.scored == 0:
        raise ValueError("none of the {} frames on {} in {} has ground truth with the same header stamp ({}); "
                         "check the GT topic / index stamps".format(
                             stats.segmented, image.topic, bag_path,
                             "index {}".format(index) if use_index else "topic {}".format(gt_topic)))
    if frames.gt_without_frame:
        stats.notes.append("{} ground-truth stamp(s) matched no decodable frame, e.g. {}".format(
            len(frames.gt_without_frame), format_stamp(frames.gt_without_frame[0])))
    if frames.duplicate_count:
        stats.notes.append("{} repeated stamp(s) on a topic (later copies ignored for pairing), e.g. {} on {}".format(
            frames.duplicate_count, format_stamp(frames.duplicates[0][0]), frames.duplicates[0][1]))
    for note in stats.notes:
        LOG.warning(note)
    stats.extra["gt_without_frame"] = len(frames.gt_without_frame)
    if bare:
        record_throughput(stats, bare)
    inputs: Dict[str, Any] = {"bag": Path(bag_path).resolve(),
                              "image topic": "{} ({})".format(image.topic, image.msgtype)}
    if use_index:
        inputs.update({"index": Path(index).resolve(), "labels": Path(labels).resolve()})
    else:
        inputs["ground-truth topic"] = gt_topic
        if inst_topic and with_instances:
            inputs["instance topic"] = inst_topic
    paths = write_outputs(out, evaluator, stats, model=loaded.description,
                          backend=str(loaded.segmenter.backend_name), inputs=inputs,
                          title="Bag evaluation ({})".format(loaded.spec.dataset))
    return Evaluation(evaluator.result(), paths, stats)


def evaluate_predictions(pred: PathLike, gt: PathLike, out: PathLike, *, dataset: str = "cityscapes",
                         pred_ids: str = "auto", pred_glob: str = "*.png", with_instances: bool = True,
                         skip_missing: bool = False, workers: int = 4, progress: bool = True) -> Evaluation:
    """Score prediction PNGs against ground truth (Cityscapes: as ``cityscapesscripts``)."""
    pred, gt = Path(pred), Path(gt)
    evaluator, unmatched, notes = score_predictions(pred, gt, dataset=dataset, pred_ids=pred_ids, pred_glob=pred_glob,
                                                    with_instances=with_instances, skip_missing=skip_missing,
                                                    workers=workers, progress=progress)
    if unmatched:
        notes.append("{} prediction file(s) had no ground truth and were not scored, e.g. {}".format(
            len(unmatched), ", ".join(p.name for p in unmatched[:3])))
        LOG.warning(notes[-1])
    paths = write_evaluation(Path(out), evaluator, frames_without_gt=len(unmatched), model=None, backend=None,
                             inputs={"predictions": pred.resolve(), "ground truth": gt.resolve()},
                             notes=notes, title="Prediction evaluation ({})".format(dataset))
    return Evaluation(evaluator.result(), paths, notes=notes)
