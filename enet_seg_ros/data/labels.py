"""Label specifications: class names, ids, train ids, categories and palettes.

One module is the single source of truth for training, the model cards, the ROS nodes and
evaluation. Cityscapes facts follow the official ``cityscapesscripts`` label table; CamVid
follows the SegNet 11-class split (value 11 = Unlabelled, ignored).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np

Color = Tuple[int, int, int]


class CityscapesLabel(NamedTuple):
    """One row of the official Cityscapes label table."""

    name: str
    id: int
    train_id: int
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: Color


CITYSCAPES_TABLE: Tuple[CityscapesLabel, ...] = tuple(CityscapesLabel(*row) for row in (
    ("unlabeled", 0, 255, "void", 0, False, True, (0, 0, 0)),
    ("ego vehicle", 1, 255, "void", 0, False, True, (0, 0, 0)),
    ("rectification border", 2, 255, "void", 0, False, True, (0, 0, 0)),
    ("out of roi", 3, 255, "void", 0, False, True, (0, 0, 0)),
    ("static", 4, 255, "void", 0, False, True, (0, 0, 0)),
    ("dynamic", 5, 255, "void", 0, False, True, (111, 74, 0)),
    ("ground", 6, 255, "void", 0, False, True, (81, 0, 81)),
    ("road", 7, 0, "flat", 1, False, False, (128, 64, 128)),
    ("sidewalk", 8, 1, "flat", 1, False, False, (244, 35, 232)),
    ("parking", 9, 255, "flat", 1, False, True, (250, 170, 160)),
    ("rail track", 10, 255, "flat", 1, False, True, (230, 150, 140)),
    ("building", 11, 2, "construction", 2, False, False, (70, 70, 70)),
    ("wall", 12, 3, "construction", 2, False, False, (102, 102, 156)),
    ("fence", 13, 4, "construction", 2, False, False, (190, 153, 153)),
    ("guard rail", 14, 255, "construction", 2, False, True, (180, 165, 180)),
    ("bridge", 15, 255, "construction", 2, False, True, (150, 100, 100)),
    ("tunnel", 16, 255, "construction", 2, False, True, (150, 120, 90)),
    ("pole", 17, 5, "object", 3, False, False, (153, 153, 153)),
    ("polegroup", 18, 255, "object", 3, False, True, (153, 153, 153)),
    ("traffic light", 19, 6, "object", 3, False, False, (250, 170, 30)),
    ("traffic sign", 20, 7, "object", 3, False, False, (220, 220, 0)),
    ("vegetation", 21, 8, "nature", 4, False, False, (107, 142, 35)),
    ("terrain", 22, 9, "nature", 4, False, False, (152, 251, 152)),
    ("sky", 23, 10, "sky", 5, False, False, (70, 130, 180)),
    ("person", 24, 11, "human", 6, True, False, (220, 20, 60)),
    ("rider", 25, 12, "human", 6, True, False, (255, 0, 0)),
    ("car", 26, 13, "vehicle", 7, True, False, (0, 0, 142)),
    ("truck", 27, 14, "vehicle", 7, True, False, (0, 0, 70)),
    ("bus", 28, 15, "vehicle", 7, True, False, (0, 60, 100)),
    ("caravan", 29, 255, "vehicle", 7, True, True, (0, 0, 90)),
    ("trailer", 30, 255, "vehicle", 7, True, True, (0, 0, 110)),
    ("train", 31, 16, "vehicle", 7, True, False, (0, 80, 100)),
    ("motorcycle", 32, 17, "vehicle", 7, True, False, (0, 0, 230)),
    ("bicycle", 33, 18, "vehicle", 7, True, False, (119, 11, 32)),
    ("license plate", -1, -1, "vehicle", 7, False, True, (0, 0, 142)),
))


@dataclass(frozen=True)
class LabelSpec:
    """What a dataset's label images mean, in the network's (train-id) space.

    Attributes:
        dataset: ``"cityscapes"`` or ``"camvid"``.
        class_names: one name per network output class (train id order).
        palette: one RGB colour per class.
        ignore_index: train id that training and metrics ignore.
        id_to_train_id: 256-entry lookup from label-file values to train ids (unknown values
            map to ``ignore_index``); identity for datasets stored in train ids.
        train_id_to_id: dataset label id per train id (``None`` where ids are train ids).
        categories: category name per class (Cityscapes only; empty otherwise).
        category_names: the category list, in category-id order (without ``void``).
        instance_classes: train ids of classes with instances (Cityscapes iIoU).
        valid_ids: every value a label file may legally contain (others are data errors).
    """

    dataset: str
    class_names: Tuple[str, ...]
    palette: Tuple[Color, ...]
    ignore_index: int
    id_to_train_id: Tuple[int, ...]
    train_id_to_id: Optional[Tuple[int, ...]] = None
    categories: Tuple[str, ...] = ()
    category_names: Tuple[str, ...] = ()
    instance_classes: Tuple[int, ...] = ()
    valid_ids: Tuple[int, ...] = ()

    @property
    def num_classes(self) -> int:
        """Number of evaluated classes (ignore excluded)."""
        return len(self.class_names)

    def lut(self) -> np.ndarray:
        """The id -> train-id lookup table as a uint8 array of 256 entries."""
        return np.asarray(self.id_to_train_id, dtype=np.uint8)

    def palette_array(self) -> np.ndarray:
        """Palette as a (256, 3) uint8 table; unused entries are black."""
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: len(self.palette)] = np.asarray(self.palette, dtype=np.uint8)
        return table

    def to_train_ids(self, label_ids: np.ndarray) -> np.ndarray:
        """Map a label image of dataset ids to train ids (ignore for unknown ids)."""
        if label_ids.dtype != np.uint8:
            raise ValueError("label image must be uint8, got {}".format(label_ids.dtype))
        return self.lut()[label_ids]


def _cityscapes_spec() -> LabelSpec:
    evaluated = sorted((l for l in CITYSCAPES_TABLE if not l.ignore_in_eval), key=lambda l: l.train_id)
    lut = [255] * 256
    for label in CITYSCAPES_TABLE:
        if 0 <= label.id < 256:
            lut[label.id] = label.train_id if 0 <= label.train_id < 255 else 255
    category_names = tuple(dict.fromkeys(l.category for l in evaluated))
    return LabelSpec(
        dataset="cityscapes",
        class_names=tuple(l.name for l in evaluated),
        palette=tuple(l.color for l in evaluated),
        ignore_index=255,
        id_to_train_id=tuple(lut),
        train_id_to_id=tuple(l.id for l in evaluated),
        categories=tuple(l.category for l in evaluated),
        category_names=category_names,
        instance_classes=tuple(l.train_id for l in evaluated if l.has_instances),
        valid_ids=tuple(l.id for l in CITYSCAPES_TABLE if l.id >= 0),
    )


CAMVID_CLASSES: Tuple[Tuple[str, Color], ...] = (
    ("Sky", (128, 128, 128)),
    ("Building", (128, 0, 0)),
    ("Pole", (192, 192, 128)),
    ("Road", (128, 64, 128)),
    ("Sidewalk", (60, 40, 222)),
    ("Tree", (128, 128, 0)),
    ("SignSymbol", (192, 128, 128)),
    ("Fence", (64, 64, 128)),
    ("Car", (64, 0, 128)),
    ("Pedestrian", (64, 64, 0)),
    ("Bicyclist", (0, 128, 192)),
)
CAMVID_IGNORE = 11  # "Unlabelled" in the SegNet label PNGs


def _camvid_spec() -> LabelSpec:
    lut = [CAMVID_IGNORE] * 256
    for i in range(len(CAMVID_CLASSES)):
        lut[i] = i
    return LabelSpec(
        dataset="camvid",
        class_names=tuple(n for n, _ in CAMVID_CLASSES),
        palette=tuple(c for _, c in CAMVID_CLASSES),
        ignore_index=CAMVID_IGNORE,
        id_to_train_id=tuple(lut),
        valid_ids=tuple(range(len(CAMVID_CLASSES) + 1)),
    )


CITYSCAPES: LabelSpec = _cityscapes_spec()
CAMVID: LabelSpec = _camvid_spec()
_SPECS: Dict[str, LabelSpec] = {"cityscapes": CITYSCAPES, "camvid": CAMVID}


def get_label_spec(dataset: str) -> LabelSpec:
    """Return the label spec of ``dataset`` (``cityscapes`` or ``camvid``)."""
    try:
        return _SPECS[dataset.lower()]
    except KeyError:
        raise ValueError("unknown dataset {!r}; expected one of {}".format(dataset, sorted(_SPECS))) from None


def list_datasets() -> List[str]:
    """Names accepted by :func:`get_label_spec`."""
    return sorted(_SPECS)
