"""The backend registry: one entry per inference backend, and selection over it.

Each backend module registers one :class:`BackendEntry` (name, devices, a cheap probe that
says why it cannot run here, and a factory). :func:`create_backend` walks candidates built
from the registry: an explicit backend, or the ``auto`` chain, which is data
(:data:`AUTO_CHAIN`). Candidates whose probe fails are skipped with the reason logged; a
candidate that fails while initialising is logged as a warning and the next one is tried, so
a broken accelerator stack degrades to CPU inference instead of crashing the caller.

``auto`` order: TensorRT (GPU) > ONNX Runtime GPU > torch CUDA > OpenVINO (x86 CPU) > ONNX
Runtime CPU > torch CPU. OpenVINO is the fastest CPU backend measured here (BENCHMARKS.md).

Everything user-facing that lists backends (CLI choices, seg_node's parameter choices, the
launch arguments, ``config/seg.yaml``) reads :func:`list_backends`.
"""
from __future__ import annotations

import importlib
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, NamedTuple, Optional, Sequence, Tuple

from .backends.base import FAIL_ENV, Backend, BackendUnavailable, forced_failures

LOG = logging.getLogger(__name__)

# Built-in backends and the module that registers each (imported on first use, so listing
# names, e.g. for --help texts or launch arguments, never loads torch or an accelerator library).
BUILTIN_MODULES: Dict[str, str] = {"torch": "torch_backend", "onnxruntime": "onnx_backend",
                                   "openvino": "openvino_backend", "tensorrt": "tensorrt_backend"}
BACKENDS = tuple(BUILTIN_MODULES)  # kept name (was engine.select.BACKENDS); prefer list_backends()


class AutoStep(NamedTuple):
    """One step of the ``auto`` chain: try ``backend`` on ``device`` (unpacks as a pair)."""

    backend: str
    device: str


# The auto chain, most preferred first. Data, not code: change the order here.
AUTO_CHAIN: Tuple[AutoStep, ...] = (
    AutoStep("tensorrt", "cuda"), AutoStep("onnxruntime", "cuda"), AutoStep("torch", "cuda"),
    AutoStep("openvino", "cpu"), AutoStep("onnxruntime", "cpu"), AutoStep("torch", "cpu"))


@dataclass(frozen=True)
class BackendEntry:
    """A registered backend.

    Attributes:
        name: ``torch``, ``onnxruntime``...
        devices: device kinds it can drive (``cpu``, ``cuda``), preferred first.
        probe: ``probe(device_kind) -> None`` when it can run, else the reason it cannot
            (cheap: imports and device queries only, nothing built).
        factory: returns the :class:`Backend` class (imports it lazily).
        precisions: precisions per device kind, fastest first (what ``precision="auto"``
            may pick from, subject to a validated record in the model card for lossy ones).
        auto_probe: an extra check applied only when ``auto`` considers it (e.g. OpenVINO
            only on x86 CPUs); ``None`` means none.
        summary: one line for ``--help`` texts and ``doctor``.
    """

    name: str
    devices: Tuple[str, ...]
    probe: Callable[[str], Optional[str]]
    factory: Callable[[], Callable[..., Backend]]
    precisions: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    auto_probe: Optional[Callable[[str], Optional[str]]] = None
    summary: str = ""


_REGISTRY: Dict[str, BackendEntry] = {}


def register_backend(entry: BackendEntry) -> BackendEntry:
    """Add (or replace) a backend entry; returns it."""
    _REGISTRY[entry.name] = entry
    return entry


def list_backends() -> Tuple[str, ...]:
    """Names of the known backends, built-in first (``auto`` not included); imports nothing."""
    return BACKENDS + tuple(sorted(n for n in _REGISTRY if n not in BUILTIN_MODULES))


def backend_choices() -> Tuple[str, ...]:
    """``("auto",) + list_backends()``: what a ``backend`` setting accepts."""
    return ("auto",) + list_backends()


# Options create_backend reads itself; the rest go to the backend constructors.
_CREATE_OPTIONS = ("fail_backends", "auto_probe", "validated")


def backend_option_names() -> FrozenSet[str]:
    """Every option some backend's constructor takes, plus :func:`create_backend`'s own: what its
    ``**options`` may hold (backends ignore the options of others, so a misspelt one would
    otherwise vanish without a word)."""
    names = set(_CREATE_OPTIONS)
    for name in list_backends():
        for p in inspect.signature(get_backend(name).factory()).parameters.values():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("source", "input_size"):
                names.add(p.name)
    return frozenset(names)


def get_backend(name: str) -> BackendEntry:
    """The entry for ``name``; ``ValueError`` naming the choices for an unknown name."""
    if name not in _REGISTRY and name in BUILTIN_MODULES:
        importlib.import_module("{}.backends.{}".format(__package__, BUILTIN_MODULES[name]))
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError("unknown backend {!r}; expected auto or one of {}".format(name, list_backends())) from None


def probe(name: str, device: str = "cpu", for_auto: bool = False) -> Optional[str]:
    """Why ``name`` cannot run on ``device`` here, or ``None`` (cheap; nothing is built)."""
    entry = get_backend(name)
    kind = device.split(":")[0]
    if kind not in entry.devices:
        where = {"cpu": "the CPU", "cuda": "CUDA GPUs"}
        return "the {} backend runs on {} only".format(name, " or ".join(where.get(d, d) for d in entry.devices))
    why = entry.probe(kind)
    if why is None and for_auto and entry.auto_probe is not None:
        why = entry.auto_probe(kind)
    return why


def probe_all() -> List[Dict[str, Any]]:
    """Every (backend, device) with its probe result: for ``doctor`` and diagnostics."""
    rows = []
    for name in list_backends():
        for kind in get_backend(name).devices:
            rows.append({"backend": name, "device": kind, "available": probe(name, kind) is None,
                         "reason": probe(name, kind) or ""})
    return rows


def chain_for(backend: str, device: Optional[str]) -> List[Tuple[str, str]]:
    """The (backend, device) candidates for a request, most preferred first."""
    kind = device.split(":")[0] if device else None
    if kind not in (None, "cpu", "cuda"):
        raise ValueError("device must be cpu, cuda or cuda:N, got {!r}".format(device))
    if backend == "auto":
        return [(s.backend, device if device and s.device == kind else s.device)
                for s in AUTO_CHAIN if kind is None or s.device == kind]
    entry = get_backend(backend)
    if device:
        return [(backend, device)]
    # Explicit backend without a device: its devices in preference order (GPU first where it has one).
    return [(backend, d) for d in entry.devices]


# -- test / diagnostic hook ---------------------------------------------------------------------
def forced_to_fail(name: str, device: str) -> bool:
    """Whether ``$ENET_SEG_FAIL_BACKENDS`` names ``name`` or ``name:device`` (see base.forced_failures)."""
    listed = forced_failures()
    return name in listed or "{}:{}".format(name, device.split(":")[0]) in listed


def _failure_override(name: str, device: str, extra: Sequence[str]) -> None:
    listed = {s.strip().lower() for s in extra}
    if forced_to_fail(name, device) or name in listed or "{}:{}".format(name, device.split(":")[0]) in listed:
        raise RuntimeError("{} backend forced to fail ({} / fail_backends)".format(name, FAIL_ENV))


def create_backend(source, input_size, backend: str = "auto", device: Optional[str] = None,
                   precision: Optional[str] = None, strict: bool = False, **options) -> Backend:
    """Build the best backend for the request.

    Args:
        source: :class:`~enet_seg_ros.engine.source.ModelSource`.
        input_size: (width, height) of the network input.
        backend: ``auto`` or one of :func:`list_backends`.
        device: restrict to ``cpu`` / ``cuda`` / ``cuda:N``.
        precision: requested precision (``None``: each backend's default); candidates that
            lack it are skipped. ``auto``: on each backend, the validated precisions of
            ``validated`` (from :class:`Segmenter`) and the default; with several, the fastest
            as measured here (:mod:`.autoprobe`, cached; option ``auto_probe=False`` or
            ``$ENET_SEG_AUTO_PROBE=0``: the static order).
        strict: with an explicit backend, raise instead of falling back to the ``auto`` chain.
        **options: backend options (threads, cache_dir, calibration, with_confidence...).
            ``fail_backends`` (names or ``name:device``) is a test / diagnostic hook: those
            candidates fail as if their library were broken (also ``$ENET_SEG_FAIL_BACKENDS``).

    Returns the backend; ``backend.skipped`` maps every candidate tried before it to the reason.

    Raises:
        RuntimeError: no candidate could be initialised (the message lists every reason).
    """
    if backend != "auto":
        get_backend(backend)  # unknown name: ValueError naming the choices
    known = backend_option_names()
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError("unknown backend option(s) {}; the backends take {}".format(
            ", ".join(unknown), ", ".join(sorted(known - set(_CREATE_OPTIONS)))))
    candidates = [(n, d, False) for n, d in chain_for(backend, device)]
    if backend != "auto" and not strict:
        # An explicit choice that fails still leaves the camera running on the next best backend.
        candidates += [(n, d, True) for n, d in chain_for("auto", device) if (n, d) not in
                       [(c[0], c[1]) for c in candidates]]
    elif backend == "auto":
        candidates = [(n, d, True) for n, d, _ in candidates]
    fail = tuple(options.pop("fail_backends", None) or ())
    from .autoprobe import probe_enabled

    probe_on = probe_enabled(options.pop("auto_probe", None))
    validated: Dict[str, Dict[str, Any]] = options.pop("validated", None) or {}
    reasons: Dict[str, str] = {}
    for name, dev, via_auto in candidates:
        label = "{}-{}".format(name, dev)
        why = probe(name, dev, for_auto=via_auto)
        if why:
            reasons[label] = why
            LOG.debug("backend %s skipped: %s", label, why)
            continue
        try:
            _failure_override(name, dev, fail)
        except RuntimeError as exc:
            reasons[label] = "failed: RuntimeError: {}".format(exc)
            LOG.warning("backend %s failed to initialise (%s); trying the next one", label, reasons[label])
            continue
        entry = get_backend(name)
        measured: Optional[Dict[str, Any]] = None
        if precision == "auto":
            plan = precision_plan(entry, dev, validated)
            if len(plan) > 1 and probe_on:
                instance, measured = _measured_choice(entry, label, dev, plan, source, input_size, validated,
                                                      options, reasons)
            else:
                instance = _first_that_builds(entry, label, dev, plan, True, source, input_size, options, reasons)
        else:
            instance = _first_that_builds(entry, label, dev, [precision], False, source, input_size, options, reasons)
        if instance is None:
            continue
        skipped = "; ".join("{}: {}".format(k, v) for k, v in reasons.items())
        LOG.info("inference backend: %s%s", instance.describe(), " (skipped {})".format(skipped) if skipped else "")
        instance.skipped = dict(reasons)
        instance.selection = {"requested_backend": backend, "requested_precision": precision,
                              "via_auto_chain": via_auto, "validated": validated.get(instance.precision),
                              "measured": measured}
        return instance
    raise RuntimeError("no inference backend could be initialised for backend={!r} device={!r} precision={!r}: {}".format(
        backend, device, precision, "; ".join("{}: {}".format(k, v) for k, v in reasons.items())))


def _first_that_builds(entry: BackendEntry, label: str, dev: str, plan: Sequence[Optional[str]], auto: bool,
                       source, input_size, options: Dict[str, Any], reasons: Dict[str, str]) -> Optional[Backend]:
    """The first precision of ``plan`` whose backend initialises (failures go to ``reasons``)."""
    for prec in plan:
        step = label if prec is None or not auto else "{}/{}".format(label, prec)
        try:
            return entry.factory()(source, input_size, device=dev, precision=prec, **options)
        except BackendUnavailable as exc:
            reasons[step] = str(exc)
            LOG.debug("backend %s skipped: %s", step, exc)
        except Exception as exc:  # a real initialisation failure: warn and fall back
            reasons[step] = "failed: {}: {}".format(exc.__class__.__name__,
                                                    str(exc).splitlines()[0] if str(exc) else "")
            LOG.warning("backend %s failed to initialise (%s); trying the next one", step, reasons[step])
            if prec is None or not auto:
                break
    return None


def _measured_choice(entry: BackendEntry, label: str, dev: str, plan: Sequence[Optional[str]], source, input_size,
                     validated: Dict[str, Dict[str, Any]], options: Dict[str, Any],
                     reasons: Dict[str, str]) -> Tuple[Optional[Backend], Optional[Dict[str, Any]]]:
    """``precision="auto"`` with several candidates: the fastest one as measured here (see :mod:`.autoprobe`).

    A measurement cached for the same weights, backend, device, size, candidates, CPU and
    runtimes is reused: only its winner is built. Returns ``(backend, what was measured)``.
    """
    from .autoprobe import cached_choice, choose_fastest, probe_fields, store_choice
    from .cache import ArtifactCache

    names = ["default" if p is None else p for p in plan]
    cache = ArtifactCache(options.get("cache_dir"), "autoprobe")
    fields = probe_fields(source.sha256, entry.name, dev, input_size,
                          {n: validated.get(n) for n in names}, options, source.arch)
    hit = cached_choice(cache, fields)
    if hit is not None:
        first = names.index(hit["choice"])
        order = [plan[first]] + [p for i, p in enumerate(plan) if i != first]
        instance = _first_that_builds(entry, label, dev, order, True, source, input_size, options, reasons)
        chosen = None if hit["choice"] == "default" else hit["choice"]
        if instance is not None and (chosen is None or instance.precision == chosen):
            return instance, dict(hit, cached=True)
        return instance, None
    built: Dict[str, Backend] = {}
    for prec, name in zip(plan, names):
        instance = _first_that_builds(entry, label, dev, [prec], True, source, input_size, options, reasons)
        if instance is not None:
            built[name] = instance
    if not built:
        return None, None
    if len(built) == 1:
        return next(iter(built.values())), None
    choice, ms = choose_fastest(built, input_size)
    for name, instance in built.items():
        if name != choice:
            instance.close()
    shown = {(built[n].precision if n == "default" else n): v for n, v in ms.items()}
    store_choice(cache, fields, choice, shown, [n for n in names if n not in built])
    LOG.info("precision auto on %s: measured %s, picked %s", label, shown, choice)
    return built[choice], {"choice": choice, "ms": shown, "cached": False}


def precision_plan(entry: BackendEntry, device: str, validated: Dict[str, Dict[str, Any]]) -> List[Optional[str]]:
    """Precisions ``auto`` tries on ``entry``/``device``: validated lossy ones, fastest first, then the default.

    ``validated`` maps a precision to its accepted accuracy record (model card ``precisions``);
    a record lists the backends it was checked on (``backends``), and only those may use it.
    """
    kind = device.split(":")[0]
    plan: List[Optional[str]] = []
    for prec in entry.precisions.get(kind, ()):
        record = validated.get(prec)
        if record and entry.name in record.get("backends", {}):
            plan.append(prec)
    return plan + [None]


def is_x86() -> bool:
    """True on x86-64 CPUs (OpenVINO's CPU plugin is tuned for them)."""
    import platform

    return platform.machine().lower() in ("x86_64", "amd64", "x64", "i686", "i386")


__all__ = ["AUTO_CHAIN", "BACKENDS", "AutoStep", "BackendEntry", "register_backend", "list_backends", "backend_choices",
           "get_backend", "probe", "probe_all", "chain_for", "create_backend"]
