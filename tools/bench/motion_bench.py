"""Motion-gate cost per frame on the shared feeder clips, with what surrounds it for scale.

    python tools/bench/motion_bench.py [--shared ../shared/data] [--repeat 3]

Frames are decoded first (untimed), then each stage is timed alone over the same frames, in
one run, so the printed ratios compare like with like. ``measure_motion(paths)`` is the number
other benches combine with classifier timings: seconds per frame for the whole gate (grey
downscale + detect) at the clips' native 320x240; ``main`` also shows it at 1280x720, the
Pi's default main-stream size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from feederd.config import MotionConfig
from feederd.motion import MotionDetector, downscale_grey
from feederd.types import Frame

DEFAULT_SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def shared_clips(shared: Path | None = None) -> list[Path]:
    """The feeder clips (``video/bird_*.mp4``) of the shared data folder."""
    root = shared or Path(os.environ.get("FEEDERD_SHARED_DATA", DEFAULT_SHARED))
    clips = sorted((root / "video").glob("bird_*.mp4"))
    if not clips:
        raise SystemExit(f"no feeder clips under {root / 'video'}; pass --shared")
    return clips


def load_frames(path: Path, size: tuple[int, int] | None = None,
                limit: int | None = None) -> list[np.ndarray]:
    """The frames of a video as BGR (the first ``limit``), resized to ``size`` if given."""
    cap = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    while limit is None or len(frames) < limit:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image if size is None else cv2.resize(image, size))
    cap.release()
    return frames


def _median(work: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``repeat`` runs of ``work()`` after one untimed warm-up run.

    Every stage, decode included, is timed the same way, so the printed ratios divide like
    by like (a best-of-N gate over one cold decode would flatter the gate).
    """
    work()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _run_gate(frames: list[np.ndarray], greys: list[np.ndarray] | None,
              cfg: MotionConfig) -> None:
    """One fresh detector over a clip; ``greys`` None makes it downscale each frame itself."""
    detector = MotionDetector(cfg)
    for seq, image in enumerate(frames):
        grey = greys[seq] if greys is not None else None
        detector.detect(Frame(seq, seq / 24, 0.0, image, grey))


def measure_motion(paths: Sequence[Path], cfg: MotionConfig | None = None,
                   repeat: int = 3) -> float:
    """Seconds per frame of the motion gate (grey downscale + detect) over the given videos."""
    cfg = cfg or MotionConfig()
    total, count = 0.0, 0
    for path in paths:
        frames = load_frames(Path(path))
        total += _time_clip(frames, cfg, repeat, gate_only=True)["motion gate total"]
        count += len(frames)
    return total / count


def _direct_area(frames: list[np.ndarray], height: int) -> None:
    for image in frames:
        width = round(image.shape[1] * height / image.shape[0])
        cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (width, height),
                   interpolation=cv2.INTER_AREA)


STAGES = ("decode (+ resize)", "grey downscale (ours)", "grey downscale (1-step INTER_AREA)",
          "detect on a given grey", "motion gate total")


def _time_clip(frames: list[np.ndarray], cfg: MotionConfig, repeat: int,
               gate_only: bool = False) -> dict[str, float]:
    """Seconds each stage takes over one clip's frames (decode excluded)."""
    gate = _median(lambda: _run_gate(frames, None, cfg), repeat)
    if gate_only:
        return {"motion gate total": gate}
    greys = [downscale_grey(image, cfg.height) for image in frames]
    return {
        "grey downscale (ours)": _median(
            lambda: [downscale_grey(image, cfg.height) for image in frames], repeat),
        "grey downscale (1-step INTER_AREA)": _median(
            lambda: _direct_area(frames, cfg.height), repeat),
        "detect on a given grey": _median(lambda: _run_gate(frames, greys, cfg), repeat),
        "motion gate total": gate,
    }


def _stages(paths: list[Path], cfg: MotionConfig, size: tuple[int, int] | None,
            limit: int | None, repeat: int) -> tuple[int, dict[str, float]]:
    """Seconds per frame of each stage, timed clip by clip on the same frames."""
    totals = dict.fromkeys(STAGES, 0.0)
    count = 0
    for path in paths:
        frames = load_frames(path, size, limit)
        totals["decode (+ resize)"] += _median(lambda: load_frames(path, size, limit), repeat)  # noqa: B023
        for name, seconds in _time_clip(frames, cfg, repeat).items():
            totals[name] += seconds
        count += len(frames)
    return count, {name: seconds / count for name, seconds in totals.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--shared", type=Path, default=None, help="the shared data folder")
    parser.add_argument("--repeat", type=int, default=5, help="median of this many runs")
    parser.add_argument("--hd-frames", type=int, default=60,
                        help="frames per clip for the 1280x720 pass (memory: 2.8 MB each)")
    args = parser.parse_args(argv)
    paths = shared_clips(args.shared)
    cfg = MotionConfig()
    print(f"{len(paths)} clips; OpenCV {cv2.__version__}, {cv2.getNumThreads()} threads, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; motion height {cfg.height}; "
          f"median of {args.repeat} after a warm-up")
    passes = (("320x240, as recorded", None, None),
              ("1280x720, upscaled (the Pi's main stream size)", (1280, 720), args.hd_frames))
    for label, size, limit in passes:
        count, stages = _stages(paths, cfg, size, limit, args.repeat)
        print(f"\n{label}: {count} frames")
        for name, seconds in stages.items():
            print(f"  {name:36s} {seconds * 1e6:8.0f} us/frame")
        total = stages["motion gate total"]
        one_step = stages["grey downscale (1-step INTER_AREA)"] / stages["grey downscale (ours)"]
        print(f"  1-step / our 2-step downscale        {one_step:8.2f} x")
        print(f"  motion gate / decode                 "
              f"{total / stages['decode (+ resize)']:8.2f} x")
        print(f"  frames/s the gate alone could do     {1 / total:8.0f}")
    print(f"\nmeasure_motion(clips) = {measure_motion(paths, cfg, args.repeat) * 1e6:.0f} "
          "us/frame")


if __name__ == "__main__":
    main()
