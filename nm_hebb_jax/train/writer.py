"""Metric writing: TensorBoard event files, a JSON-lines log, a console progress bar, provenance."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata

import jax
from absl import logging

from nm_hebb_jax.errors import LoadError, MissingFileError

PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "tensorflow-datasets",
    "ml-collections",
    "chex",
    "numpy",
    "scikit-learn",
)


class _NoProgress:
    def update(self, n=1, **kw):
        del n, kw

    def close(self):
        pass


class _Progress:
    """tqdm bar with steps/s and ETA; loss/top1 in the postfix."""

    def __init__(self, total, initial, desc):
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def update(self, n=1, **kw):
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in kw.items()}, refresh=False)
        self.bar.update(n)

    def close(self):
        self.bar.close()


class _EventFile:
    """A TensorBoard event file written in the caller's thread (tensorboardX's record format).

    tensorboardX's ``SummaryWriter`` writes from a thread of its own and flushes at exit, so a
    failed write (a full disk) surfaced there as a traceback of that thread and another at exit;
    here it is raised by :meth:`scalars`, to the run, which reports it.
    """

    def __init__(self, logdir: str):
        from tensorboardX.event_file_writer import EventsWriter

        os.makedirs(logdir, exist_ok=True)
        self._writer = EventsWriter(os.path.join(logdir, "events"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from tensorboardX.proto import event_pb2
        from tensorboardX.summary import scalar

        now = time.time()
        for k, v in values.items():
            event = event_pb2.Event(wall_time=now, step=int(step), summary=scalar(k, v))
            self._writer.write_event(event)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MetricWriter:
    """Writes scalars to ``workdir/tb`` (TensorBoard) and ``workdir/metrics.jsonl``.

    Only the main process writes (``enabled``); the others get no-ops. Writes happen in the
    caller's thread, so a failed one raises there.
    """

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.workdir = workdir
        self.enabled = enabled
        self._tb = _EventFile(os.path.join(workdir, "tb")) if enabled else None

    def scalars(self, step: int, values: dict) -> None:
        """Logs ``{name: float}`` at ``step`` (TensorBoard, JSON lines, absl log)."""
        if not self.enabled:
            return
        values = {k: float(v) for k, v in values.items()}
        self._tb.scalars(step, values)
        self.append_jsonl("metrics.jsonl", {"step": int(step), **values})
        short = ", ".join(
            f"{k}={v:.4g}"
            for k, v in sorted(values.items())
            if k.split("/")[-1] in ("loss", "top1", "gate", "lr", "steps_per_s")
        )
        logging.info("step %d: %s", step, short)

    def append_jsonl(self, name: str, record: dict) -> None:
        """Appends one JSON record to ``workdir/name``."""
        if not self.enabled:
            return
        with open(os.path.join(self.workdir, name), "a") as f:
            f.write(json.dumps(record, default=str) + "\n")

    def progress(self, *, total: int, initial: int, desc: str, enabled: bool = True):
        """A progress bar (or a no-op when disabled or not the main process)."""
        if not (enabled and self.enabled):
            return _NoProgress()
        return _Progress(total, initial, desc)

    def close(self) -> None:
        """Flushes and closes the event file."""
        if self._tb is not None:
            tb, self._tb = self._tb, None
            tb.close()


def write_config(workdir: str, config) -> str:
    """Writes the resolved config to ``workdir/config.json``; returns the path written.

    A relaunch with the same config leaves the file as it is; a different config goes to
    ``config.<timestamp>.json`` beside it, so what an earlier launch recorded is never overwritten.
    """
    path = os.path.join(workdir, "config.json")
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return path
        path = os.path.join(workdir, f"config.{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        f.write(text)
    return path


def read_config(workdir: str):
    """A run's ``config.json`` as an ``ml_collections.ConfigDict``.

    Raises:
      MissingFileError: ``workdir`` has no ``config.json`` (a FileNotFoundError; one line).
      LoadError: ``config.json`` is damaged (not a JSON object; the message names the file).
    """
    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise MissingFileError(
            f"{workdir} has no config.json; pass the --workdir of a training run"
        )
    return ml_collections.ConfigDict(read_json(path, what="the run's config"))


def read_json(path: str, *, what: str) -> dict:
    """A JSON object from ``path``; a damaged file is a one-line LoadError naming it.

    Args:
      path: the file.
      what: what the file holds, for the message (``"the run's config"``).
    """
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LoadError(f"{path} ({what}) is damaged: not valid JSON ({reason})") from None
    except OSError as e:
        raise LoadError(f"{path} ({what}) cannot be read ({e.strerror})") from None
    if not isinstance(value, dict):
        raise LoadError(f"{path} ({what}) is damaged: a JSON {type(value).__name__}, not an object")
    return value


def git_commit() -> str:
    """The package's git commit (with ``-dirty``), or ``'unknown'`` outside a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict:
    """Installed versions of the packages the results depend on."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(config, mesh=None, *, resumed_from: dict | None = None) -> dict:
    """What produced a run: commit, versions, devices, seed, host, command line, time."""
    devices = jax.devices()
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": git_commit(),
        "versions": package_versions(),
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind,
        "process_count": jax.process_count(),
        "mesh": dict(mesh.shape) if mesh is not None else None,
        "seed": int(config.seed),
        "host": socket.gethostname(),
        "argv": list(sys.argv),
        "resumed_from_step": None if not resumed_from else resumed_from.get("step"),
    }
