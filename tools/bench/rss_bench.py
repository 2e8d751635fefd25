"""Where the peak RSS of ``feederd run`` goes: imports, the model, run time; anon vs file pages.

    python tools/bench/rss_bench.py [--model models/aiy_birds_v1.onnx] [--runs 3]
                                    [--env MALLOC_ARENA_MAX=2 ...] [--source FOLDER]

Each run is a fresh ``feederd run`` process replaying the first shared feeder clip with MQTT off
(the same configuration as ``pipeline_bench.py``'s RSS figure), or ``--source`` (another clip or
a photo folder). Inside it a sampler thread records the process's RSS every 10 ms; at the end
the child prints its VmHWM, its RSS split into anonymous and file-backed pages after the
imports, after the model has loaded (``Daemon._init_classifier``: session, warm-up, the check
on real frames) and at the peak sample, and every mapping's share of the peak (read from
``/proc/self/smaps`` at that moment), summed by origin (allocated, OpenCV, onnxruntime,
FFmpeg, ...) and listed for the largest libraries. One more fresh process imports, step by
step, what ``import feederd.daemon`` pulls in, so each import's cost is seen on its own.

``--env`` repeats the daemon runs with environment settings (glibc, OpenBLAS, OpenCV knobs) in
interleaved rounds, so a knob is judged against the plain run under the same load;
``--env PYTHONPATH=/work/main`` compares another checkout the same way. Interleave: how many
library pages are resident depends on what the page cache holds, which drifts by a few MB
between runs minutes apart.
File-backed pages (shared library code actually executed) count in RSS and in VmHWM although
the kernel may drop them; the split shows how much of the peak no setting of ours can free.
A library mapping's "anon" part is its relocated or written data (copy-on-write pages).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from motion_bench import DEFAULT_SHARED, shared_clips

from feederd.assets import default_model_path

TARGET_MB = 150.0
TOP_MAPPINGS = 12
IMPORT_STEPS = ("numpy", "cv2", "onnxruntime", "pydantic", "feederd.config", "feederd.spool",
                "feederd.jobs", "feederd.daemon")

# Runs inside the measured process; kept free of feederd imports until ``main`` is called.
CHILD = r"""
import collections, json, re, sys, threading, time
def status():
    keys = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    return {line.split(":")[0]: int(line.split()[1]) / 1024
            for line in open("/proc/self/status") if line.startswith(keys)}
def mappings():
    sizes, name = collections.defaultdict(lambda: [0.0, 0.0]), "[anon]"
    for line in open("/proc/self/smaps"):
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            parts = line.split()
            name = parts[5] if len(parts) > 5 else "[anon]"
        elif line.startswith(("Rss:", "Anonymous:")):
            sizes[name][line.startswith("Anonymous:")] += int(line.split()[1]) / 1024
    return dict(sizes)
peak = {"VmRSS": 0.0}
def sample():
    while True:
        now = status()
        if now["VmRSS"] > peak["VmRSS"] + 0.5:
            peak.update(now, maps=mappings())
        time.sleep(0.01)
threading.Thread(target=sample, daemon=True).start()
from feederd.cli import main
from feederd.daemon import Daemon
phases = {"imports": status()}
init_classifier = Daemon._init_classifier
def timed_init(self):
    init_classifier(self)
    phases["model loaded"] = status()
Daemon._init_classifier = timed_init
rc = main(sys.argv[1:])
time.sleep(0.05)
peak["VmHWM"] = status()["VmHWM"]
peak["phases"] = phases
print(json.dumps(peak))
sys.exit(rc)
"""

STEPS = r"""
import importlib, json, sys
def status():
    return {l.split(':')[0]: int(l.split()[1]) / 1024 for l in open('/proc/self/status')
            if l.startswith(('VmRSS', 'RssAnon', 'RssFile'))}
steps = [("python", status())]
for name in sys.argv[1:]:
    importlib.import_module(name)
    steps.append((name, status()))
print(json.dumps(steps))
"""


def run_daemon(model: Path, clip: Path, env: dict[str, str]) -> dict:
    """One fresh ``feederd run`` replaying ``clip`` (a file or folder); its peak figures (MB)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "feederd.toml"
        config.write_text(f'state_dir = "{tmp}"\n[camera]\nsource = "{clip.resolve()}"\n'
                          f'realtime = false\n[classifier]\nmodel = "{model.resolve()}"\n'
                          '[mqtt]\nenabled = false\n')
        # Run from the temporary folder: with ``-c`` the working directory comes first on
        # sys.path, and ``--env PYTHONPATH=/other/tree`` must decide which feederd runs.
        result = subprocess.run([sys.executable, "-c", CHILD, "run", "--config", str(config)],
                                capture_output=True, text=True, check=True, cwd=tmp,
                                env={**os.environ, **env})
    return json.loads(result.stdout.strip().splitlines()[-1])


def import_steps() -> list[tuple[str, dict[str, float]]]:
    """RSS of one fresh interpreter after each of :data:`IMPORT_STEPS` in turn (MB)."""
    result = subprocess.run([sys.executable, "-c", STEPS, *IMPORT_STEPS],
                            capture_output=True, text=True, check=True)
    return [(name, figures) for name, figures in json.loads(result.stdout)]


def split(figures: dict[str, float]) -> str:
    return (f"{figures['VmRSS']:6.1f} MB (anon {figures['RssAnon']:5.1f}, "
            f"file {figures['RssFile']:5.1f})")


def parse_env(items: list[str]) -> dict[str, dict[str, str]]:
    sides: dict[str, dict[str, str]] = {"plain": {}}
    for item in items:
        name, _, value = item.partition("=")
        if not name or not value:
            raise SystemExit(f"--env {item!r}: expected NAME=VALUE")
        sides[item] = {name: value}
    return sides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path,
                        default=Path(os.environ.get("FEEDERD_SHARED_DATA", DEFAULT_SHARED)))
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--source", type=Path, default=None,
                        help="clip or photo folder to replay (default: the first shared clip)")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per side")
    parser.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE",
                        help="also run with each of these environment settings")
    args = parser.parse_args(argv)
    clip = args.source or shared_clips(args.shared)[0]
    print(f"feederd run, {args.model.name}, replaying {clip.name}, {args.runs} fresh runs/side")
    show_imports(import_steps())
    sides = parse_env(args.env)
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for _ in range(args.runs):
        for name, env in sides.items():
            runs[name].append(run_daemon(args.model, clip, env))
    for name, results in runs.items():
        hwm = sorted(r["VmHWM"] for r in results)
        print(f"  {name:<40} VmHWM {hwm[0]:6.1f} / {statistics.median(hwm):6.1f} / "
              f"{hwm[-1]:6.1f} MB (min / median / max; target <= {TARGET_MB:g})")
    show_peak(runs["plain"][-1])
    return 0


def show_imports(steps: list[tuple[str, dict[str, float]]]) -> None:
    print("  imports, one fresh process, in turn (each adds to the one before):")
    before = None
    for name, figures in steps:
        added = "" if before is None else f"   +{figures['VmRSS'] - before['VmRSS']:5.1f}"
        print(f"    {name:<16} {split(figures)}{added}")
        before = figures


# Where a mapping's pages come from, by the first rule its path matches.
GROUPS = (("allocated (heap, anonymous)", ("[heap]", "[anon]", "[stack]")),
          ("FFmpeg (OpenCV's video decoding)", ("/libav", "/libsw")),
          ("OpenCV", ("/cv2/", "opencv_python")), ("onnxruntime", ("/onnxruntime/",)),
          ("numpy", ("/numpy",)), ("pydantic", ("pydantic",)),
          ("Python", ("libpython", "/lib-dynload/", "/bin/python")))


def group_of(path: str) -> str:
    for name, needles in GROUPS:
        if any(needle in path for needle in needles):
            return name
    return "system libraries, other" if path.startswith("/") else "other anonymous"


def show_peak(run: dict) -> None:
    """Phases of one run, then its peak sample by origin and by mapping."""
    print("  one run, by phase:")
    for phase, figures in [*run["phases"].items(), ("peak (frame loop)", run)]:
        print(f"    {phase:<18} {split(figures)}")
    groups: dict[str, list[float]] = {}
    for path, (size, anon) in run["maps"].items():
        total = groups.setdefault(group_of(path), [0.0, 0.0])
        total[0] += size
        total[1] += anon
    print("  at the peak sample, by origin (MB, resident / of it anon):")
    for name, (size, anon) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
        if size < 0.05:
            continue
        print(f"    {size:6.1f} / {anon:4.1f}  {name}")
    print("  largest library mappings (MB, resident / of it anon):")
    ranked = sorted(((path, v) for path, v in run["maps"].items() if path.startswith("/")),
                    key=lambda kv: -kv[1][0])
    for path, (size, anon) in ranked[:TOP_MAPPINGS]:
        print(f"    {size:6.1f} / {anon:4.1f}  {path.rsplit('/', 1)[-1]}")
    rest = ranked[TOP_MAPPINGS:]
    print(f"    {sum(v[0] for _, v in rest):6.1f} / {sum(v[1] for _, v in rest):4.1f}  "
          f"{len(rest)} other library mappings")


if __name__ == "__main__":
    sys.exit(main())
