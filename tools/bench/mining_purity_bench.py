"""Mining purity on the 15 shared feeder clips, against what is really in each crop.

For each model (the SqueezeNet ImageNet bundle the tests build, every non-bird class a
negative; the shipped AIY Birds V1 bundle when present; or ``--model FILE``), the clips are
replayed through the device pipeline with default settings, each closed visit is mined, and
every mined crop is checked against ``tests/mining/clip_truth.csv`` (labelled by looking): per
reason, the share of samples whose claim is true (purity); the share of mined crops meant to
show the animal that do; the share of near-duplicates of an earlier sample of the same visit;
which clips gave ``missed_visit`` samples. Then once more with the overlay masks that
``feederd suggest-masks`` finds in the same clips, and the time mining takes per visit
(min/median/max of ``--repeat`` runs, after a warm-up).

    python3 tools/bench/mining_purity_bench.py [--model FILE] [--repeat 5]

Targets (issue 11): flicker_negative purity >= 85%, >= 90% of crops with the animal,
<= 5% near-duplicates, the blue jay and titmouse visits the model misses as missed_visit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from mining.purity import Visit, clip_settings, load_truth, mine, replay, score  # noqa: E402

from feederd.classifier import Classifier  # noqa: E402
from feederd.config import Settings  # noqa: E402
from feederd.mining.decisions import mine_visit  # noqa: E402
from feederd.overlays import read_grey_frames, suggest_masks  # noqa: E402
from feederd.task import generic_negative  # noqa: E402

SHARED = Path(os.environ.get("FEEDERD_SHARED_DATA", REPO.parent / "shared" / "data"))
AIY = REPO / "models" / "aiy_birds_v1.onnx"
# An example local list (common feeder birds of the north-eastern US, where the clips were
# filmed), as an owner would write it in visits.species.
LOCAL = ["Tufted Titmouse", "Blue Jay", "Black-capped Chickadee", "Northern Cardinal",
         "Dark-eyed Junco", "House Sparrow", "House Finch", "American Goldfinch",
         "Downy Woodpecker", "White-breasted Nuthatch", "Red-bellied Woodpecker",
         "Mourning Dove", "European Starling", "Common Grackle", "Carolina Wren"]


def squeezenet(out: Path) -> Path:
    from test_daemon_spool import squeezenet as build

    return build(SHARED, out, "squeezenet-birds", True)


def run(classifier: Classifier, clips: list[Path], masks: list | None,
        species: list[str] | None = None) -> tuple[list[Visit], Settings]:
    sections = {"motion": {"ignore_masks": masks} if masks else {},
                "visits": {"species": species} if species else {}}
    visits: list[Visit] = []
    settings = clip_settings(clips[0], **sections)
    for clip in clips:
        settings = clip_settings(clip, **sections)
        visits += replay(clip, classifier, settings)
    return visits, settings


def mining_time(visits: list[Visit], classifier: Classifier, settings: Settings,
                repeat: int) -> str:
    """Seconds per visit to mine (dHash included), min/median/max over ``repeat`` runs."""
    negatives = frozenset(classifier.bundle.negative_labels)
    label = generic_negative(negatives)

    def once() -> float:
        start = time.perf_counter()
        for visit in visits:
            mine_visit(visit.frames, settings.mining, negatives, negative_label=label,
                       alerted=visit.summary.alerted)
        return (time.perf_counter() - start) / max(1, len(visits))

    once()  # warm-up
    times = sorted(once() for _ in range(repeat))
    frames = sum(len(v.frames) for v in visits) / max(1, len(visits))
    return (f"mining per visit ({frames:.0f} classified frames): min {times[0] * 1e3:.2f} ms, "
            f"median {statistics.median(times) * 1e3:.2f} ms, max {times[-1] * 1e3:.2f} ms")


def report(name: str, path: Path, clips: list[Path], masks: list, repeat: int) -> None:
    truth = load_truth()
    classifier = Classifier(path)
    for title, used in (("defaults", None), ("with suggested overlay masks", masks)):
        visits, settings = run(classifier, clips, used)
        print(f"\n== {name}, {title} ==")
        print(score(visits, mine(visits, classifier, settings), truth).table())
        if used is None:
            print(mining_time(visits, classifier, settings, repeat))
    if len(classifier.task.species) > 100:  # a big species model: also with a local list
        local = Classifier(path, species=LOCAL)
        visits, settings = run(local, clips, None, LOCAL)
        print(f"\n== {name}, visits.species = {len(local.task.species)} local species ==")
        print(score(visits, mine(visits, local, settings), truth).table())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a bundle to measure instead")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    clips = sorted((SHARED / "video").glob("bird_*.mp4"))
    if len(clips) != 15:
        print(f"need the 15 shared clips in {SHARED / 'video'}", file=sys.stderr)
        return 2
    found = suggest_masks([read_grey_frames(c, 100) for c in clips])
    print(f"suggested overlay masks: {found.masks}")
    with tempfile.TemporaryDirectory() as tmp:
        models = [args.model] if args.model else \
            [squeezenet(Path(tmp) / "squeezenet-birds.onnx"), *([AIY] if AIY.exists() else [])]
        for path in models:
            report(path.stem, path, clips, found.masks, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
