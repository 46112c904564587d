"""On-disk cache for exported artefacts (ONNX graphs, TensorRT engines).

Every artefact is written atomically next to a JSON sidecar that records the key it was built
for and the SHA-256 of its bytes. :meth:`ArtifactCache.lookup` trusts a file only when the
sidecar exists, its key fields match and the bytes hash to the recorded digest; anything else
(truncated file, foreign file, half-written build, a different TensorRT version or GPU) is
reported as stale and rebuilt by the caller instead of being loaded.

The cache lives in ``$ENET_SEG_CACHE`` or ``~/.cache/enet_seg_ros``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

LOG = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

# Bump when the exported graph changes meaning (inputs/outputs/pre-processing), so old cache
# entries are never mistaken for new ones.
GRAPH_FORMAT = 5  # 4: logit offsets folded into the output layer; 5: ESPNet's concat BNs applied per part


def cache_dir(override: Optional[PathLike] = None) -> Path:
    """The cache root: ``override``, else ``$ENET_SEG_CACHE``, else ``~/.cache/enet_seg_ros``."""
    if override is not None:
        return Path(override)
    env = os.environ.get("ENET_SEG_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "enet_seg_ros"


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def key_name(fields: Dict[str, Any]) -> str:
    """A readable, filesystem-safe file stem that is unique for ``fields``.

    The readable part (arch, size, precision...) helps a person browsing the cache; the hash of
    all fields guarantees uniqueness (GPU names, versions and paths may contain anything).
    """
    readable = "_".join(str(fields[k]) for k in ("arch", "size", "variant", "precision") if k in fields)
    readable = re.sub(r"[^A-Za-z0-9.+-]+", "-", readable).strip("-")[:80]
    digest = sha256_bytes(json.dumps(fields, sort_keys=True, default=str).encode())[:16]
    return "{}_{}".format(readable, digest) if readable else digest


class ArtifactCache:
    """A folder of artefacts keyed by a dict of fields, each with a verifying sidecar."""

    def __init__(self, root: Optional[PathLike] = None, kind: str = "onnx") -> None:
        self.root = cache_dir(root) / kind
        self.kind = kind

    def paths(self, fields: Dict[str, Any], suffix: str) -> Tuple[Path, Path]:
        """(artefact path, sidecar path) for ``fields``."""
        stem = key_name(fields)
        return self.root / (stem + suffix), self.root / (stem + suffix + ".json")

    def lookup(self, fields: Dict[str, Any], suffix: str,
               env: Optional[Dict[str, Any]] = None) -> Tuple[Optional[Path], str]:
        """Return ``(path, "")`` for a verified artefact, else ``(None, reason)``.

        ``fields`` name the entry (its file name); ``env`` are facts the artefact depends on
        but that do not name it (TensorRT version, GPU): an entry built under a different
        ``env`` is stale. ``reason`` is ``"missing"`` for a plain miss, else why it is stale.
        """
        path, meta_path = self.paths(fields, suffix)
        if not path.is_file():
            return None, "missing"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            return None, "sidecar {} unreadable ({})".format(meta_path.name, exc.__class__.__name__)
        if not isinstance(meta, dict):
            return None, "sidecar {} is not a JSON object".format(meta_path.name)
        for name, wanted in (("fields", fields), ("env", env or {})):
            recorded = meta.get(name)
            if recorded != _plain(wanted):
                return None, "built for different {} ({})".format(
                    "settings" if name == "fields" else "environment", _diff(recorded, wanted))
        if sha256_file(path) != meta.get("sha256"):
            return None, "content hash mismatch (file corrupt or modified)"
        return path, ""

    def find(self, fields: Dict[str, Any], suffix: str, what: str) -> Optional[Path]:
        """The verified artefact, else ``None``; a stale or corrupt entry is logged and deleted
        so the caller rebuilds it (``what`` names it in the log, e.g. ``"int8 ONNX for enet"``)."""
        path, reason = self.lookup(fields, suffix)
        if path is None and reason != "missing":
            LOG.warning("cached %s is stale or corrupt (%s); rebuilding", what, reason)
            self.discard(fields, suffix)
        return path

    def store(self, fields: Dict[str, Any], suffix: str, data: bytes, env: Optional[Dict[str, Any]] = None,
              info: Optional[Dict[str, Any]] = None) -> Path:
        """Write ``data`` atomically with its sidecar; returns the artefact path.

        ``info``: facts about how the artefact was made (e.g. which builder), kept in the sidecar
        for :meth:`read_info`; they neither name the entry nor invalidate it.
        """
        return self.commit(fields, suffix, self.write_temp(fields, suffix, data), env, info)

    def temp_path(self, fields: Dict[str, Any], suffix: str) -> Path:
        """A private temporary path in the cache folder for a builder that writes files itself."""
        path, _ = self.paths(fields, suffix)
        self.root.mkdir(parents=True, exist_ok=True)
        return path.with_name("{}.{}.tmp{}".format(path.name, os.getpid(), suffix))

    def write_temp(self, fields: Dict[str, Any], suffix: str, data: bytes) -> Path:
        """Write ``data`` to a temporary file (see :meth:`commit`)."""
        tmp = self.temp_path(fields, suffix)
        tmp.write_bytes(data)
        return tmp

    def commit(self, fields: Dict[str, Any], suffix: str, tmp: PathLike,
               env: Optional[Dict[str, Any]] = None, info: Optional[Dict[str, Any]] = None) -> Path:
        """Move a finished temporary artefact into place and write its sidecar.

        The sidecar is written last: a crash in between leaves an entry that
        :meth:`lookup` rejects (no or mismatching sidecar), never one that is trusted.
        """
        path, meta_path = self.paths(fields, suffix)
        digest = sha256_file(tmp)
        meta_path.unlink(missing_ok=True)
        os.replace(tmp, path)
        meta = {"fields": _plain(fields), "env": _plain(env or {}), "sha256": digest, "bytes": path.stat().st_size}
        if info:
            meta["info"] = _plain(info)
        meta_tmp = meta_path.with_name(meta_path.name + ".{}.tmp".format(os.getpid()))
        meta_tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
        os.replace(meta_tmp, meta_path)
        return path

    def read_info(self, fields: Dict[str, Any], suffix: str) -> Dict[str, Any]:
        """The ``info`` recorded by :meth:`store` for an entry (``{}`` when absent or unreadable)."""
        _, meta_path = self.paths(fields, suffix)
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return {}
        info = meta.get("info") if isinstance(meta, dict) else None
        return dict(info) if isinstance(info, dict) else {}

    def discard(self, fields: Dict[str, Any], suffix: str) -> None:
        """Delete an entry (artefact and sidecar) if present."""
        for p in self.paths(fields, suffix):
            p.unlink(missing_ok=True)


def _plain(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, odd types strings)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _diff(recorded: Any, fields: Dict[str, Any]) -> str:
    if not isinstance(recorded, dict):
        return "no recorded fields"
    keys = sorted(k for k in set(recorded) | set(fields) if str(recorded.get(k)) != str(fields.get(k)))
    return ", ".join("{}: {} -> {}".format(k, recorded.get(k), fields.get(k)) for k in keys[:4]) or "?"
