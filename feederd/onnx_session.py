"""Opening an onnxruntime session for a bundle: memory-mapped when large, tuned for a Pi.

Kept apart from the per-crop inference in :mod:`feederd.classifier` because it is about the
file and the process, not about images: how a bundle is read (by path, or memory-mapped so the
weights are not held twice), which session options keep the frame loop's cores free, the CPU
flag that keeps int8 weights exact, and errors that name the file. With
:mod:`feederd.classifier` it is the only module that imports onnxruntime.
"""

from __future__ import annotations

import logging
import mmap
from pathlib import Path

import onnxruntime as ort

from feederd.cpuflags import u8s8_may_saturate
from feederd.errors import ModelError
from feederd.onnxwire import external_view

logger = logging.getLogger(__name__)

MAPPED_MIN_BYTES = 64 * 2**20
"""Bundles this large load memory-mapped (see :func:`open_session`)."""
EXTERNAL_MIN_BYTES = 2**20
"""Weights this large are mapped from the file instead of copied."""
SPIN_US = 50
"""How long an idle worker thread busy-waits for more work before it sleeps (see
:func:`_spin_briefly`): longer than the gap between two operators of a run."""


def open_session(path: Path, threads: int) -> ort.InferenceSession:
    """A session for the bundle at ``path``; large bundles are memory-mapped (see below).

    The ordinary load holds onnxruntime's parsed copy of the file and its tensors at once:
    twice the file. It is given the path, not the file's bytes: onnxruntime keeps bytes it is
    given for the session's whole life (another copy of the file in RAM, 3.5 MB for AIY).
    A bundle of :data:`MAPPED_MIN_BYTES` or more is handed over as a small rewrite whose big
    weights point back into the file (:func:`feederd.onnxwire.external_view`), which
    onnxruntime memory-maps: about once the file. Prepacking is off for those, since it would
    copy every weight matrix again; smaller bundles keep it, and their speed. Any trouble
    with the mapped load falls back to the ordinary one.
    """
    size = _model_size(path)
    if size >= MAPPED_MIN_BYTES and (session := _open_mapped(path, threads)) is not None:
        return session
    _check_readable(path)
    try:
        return ort.InferenceSession(str(path), _options(threads),
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # InvalidProtobuf, InvalidGraph, Fail...: all pybind types
        raise ModelError(f"{path}: not a loadable ONNX model ({_first_line(exc)}); the file "
                         "may be truncated or corrupt, copy it again") from exc


def _open_mapped(path: Path, threads: int) -> ort.InferenceSession | None:
    try:
        with path.open("rb") as handle, \
                mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            view = external_view(data, path.name, EXTERNAL_MIN_BYTES)
    except (OSError, ValueError):
        return None  # the ordinary load reports what is wrong with the file
    if view is None:
        return None
    options = _options(threads)
    options.add_session_config_entry(
        "session.model_external_initializers_file_folder_path", str(path.parent.resolve()))
    options.add_session_config_entry("session.disable_prepacking", "1")
    try:
        return ort.InferenceSession(view, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # an onnxruntime without external data from bytes, ...
        logger.info("%s: memory-mapped load failed (%s); loading it whole", path,
                    _first_line(exc))
        return None


def _options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    _spin_briefly(options, threads)
    if u8s8_may_saturate():  # int8 weights back to uint8: exact on x86 without VNNI
        options.add_session_config_entry("session.x64quantprecision", "1")
    return options


def _spin_briefly(options: ort.SessionOptions, threads: int) -> None:
    """Worker threads spin for :data:`SPIN_US` after each parallel section, then sleep.

    Between runs they must sleep: feederd classifies a few crops a second, never back to back,
    and onnxruntime's default spinning steals the Pi's second core from capture and motion (on
    a loaded 2-core machine it made 2-thread runs 2-11x slower). Within a run, a worker that
    sleeps at once is woken again for each of the ~60 operators, which left the second thread
    gaining almost nothing (``tools/bench/litert_bench.py``: 2-thread wall time 1.4-1.6x
    LiteRT's, 1.1x with this spin). onnxruntime before 1.26 has no bound on the spin, so there
    the workers never spin.
    """
    bounded = tuple(int(part) for part in ort.__version__.split(".")[:2]) >= (1, 26)
    if threads > 1 and bounded:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.intra_op.spin_duration_us", str(SPIN_US))
    else:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")


def _model_size(path: Path) -> int:
    try:
        if path.is_dir():
            raise ModelError(f"{path}: is a directory, not a model file")
        return path.stat().st_size
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: no such model file; check classifier.model or run "
                         "'feederd model ls'") from exc
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model file: {exc.strerror}") from exc


def _check_readable(path: Path) -> None:
    """A ModelError naming the problem now rather than onnxruntime's "failed to load"."""
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: no such model file; check classifier.model or run "
                         "'feederd model ls'") from exc
    except IsADirectoryError as exc:
        raise ModelError(f"{path}: is a directory, not a model file") from exc
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model file: {exc.strerror}") from exc


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
