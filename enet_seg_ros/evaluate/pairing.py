"""Pair frames with ground truth by header stamp, with a bounded buffer.

Used by ``eval-bag`` (camera frames + the bag's GT topics) and by ``eval_node`` (seg_node's
labels + live GT topics), so offline and live evaluation pair frames the same way.

Each stamp collects one item per stream: the ``main`` stream (a camera frame or a predicted
label image), ``gt`` and optionally ``instances``. A stamp is complete when every configured
stream has arrived. When more than ``capacity`` stamps are pending, the oldest is resolved
as it stands: main + gt (instances missing) is still scored, main alone is a frame without
ground truth, gt alone is ground truth whose frame never came (e.g. dropped by the node).
Nothing is dropped silently: every item ends up in exactly one :class:`Resolved` event.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

MAIN, GT, INSTANCES = "main", "gt", "instances"


@dataclass
class Resolved:
    """What became of one stamp.

    ``kind`` is ``"paired"`` (main + gt, ``instances`` possibly None), ``"no_gt"`` (main
    only) or ``"no_frame"`` (ground truth without a main item).
    """

    stamp_ns: int
    kind: str
    items: Dict[str, Any] = field(default_factory=dict)

    @property
    def main(self) -> Any:
        return self.items.get(MAIN)

    @property
    def gt(self) -> Any:
        return self.items.get(GT)

    @property
    def instances(self) -> Any:
        return self.items.get(INSTANCES)


class StampPairer:
    """Pairs items of several streams by stamp (see the module docstring).

    An item arriving a second time for the same pending stamp and stream is dropped and counted
    in ``duplicate_count`` (the first ``MAX_EXAMPLES`` are kept in ``duplicates``).

    Args:
        with_instances: whether an ``instances`` stream is expected.
        capacity: most stamps kept pending before the oldest is resolved incomplete.
    """

    MAX_EXAMPLES = 100

    def __init__(self, with_instances: bool = False, capacity: int = 64) -> None:
        if capacity < 1:
            raise ValueError("pairing capacity must be >= 1, got {}".format(capacity))
        self.streams: Tuple[str, ...] = (MAIN, GT, INSTANCES) if with_instances else (MAIN, GT)
        self.capacity = int(capacity)
        self._pending: "OrderedDict[int, Dict[str, Any]]" = OrderedDict()
        self.duplicates: List[Tuple[int, str]] = []
        self.duplicate_count = 0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, stream: str, stamp_ns: int, item: Any) -> List[Resolved]:
        """Add one item; returns the stamps resolved by it (completed, or evicted as too old)."""
        if stream not in self.streams:
            raise ValueError("unknown stream {!r}; expected one of {}".format(stream, self.streams))
        stamp_ns = int(stamp_ns)
        entry = self._pending.get(stamp_ns)
        if entry is None:
            entry = self._pending[stamp_ns] = {}
        if stream in entry:
            self.duplicate_count += 1
            if len(self.duplicates) < self.MAX_EXAMPLES:
                self.duplicates.append((stamp_ns, stream))
            return []
        entry[stream] = item
        out: List[Resolved] = []
        if all(s in entry for s in self.streams):
            del self._pending[stamp_ns]
            out.append(_resolve(stamp_ns, entry))
        while len(self._pending) > self.capacity:
            old_stamp, old = self._pending.popitem(last=False)
            out.append(_resolve(old_stamp, old))
        return out

    def flush(self) -> List[Resolved]:
        """Resolve every pending stamp (end of the bag / node shutdown), oldest first."""
        out = [_resolve(stamp, entry) for stamp, entry in self._pending.items()]
        self._pending.clear()
        return out


def _resolve(stamp_ns: int, entry: Dict[str, Any]) -> Resolved:
    if MAIN in entry and GT in entry:
        kind = "paired"
    elif MAIN in entry:
        kind = "no_gt"
    else:
        kind = "no_frame"
    return Resolved(stamp_ns, kind, dict(entry))
