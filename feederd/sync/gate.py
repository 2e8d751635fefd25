"""The promotion gate: a candidate replaces the deployed model only if it is better where it
matters and no worse anywhere the owner would notice.

Better: fewer false alerts on the field negatives (what the owner rejected, plus folders of
things that must not alert). No worse: no species' recall falls by more than the tolerance on
either test set of positives, the held-out base photos *as the device sees them* or the owner's
own positives from the device. Testing on device frames matters: a candidate trained on mined
device frames can trade species recall on device frames for fewer false alerts while its
recall on raw photos stays put (issue 16), so a gate on raw photos passes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from feederd.sync.evaluate import Score


def gate(cand: Score, ref: Score | None, tolerance: float, noise_images: int = 1
         ) -> tuple[bool | None, list[str]]:
    """Promote only with fewer false alerts on field negatives and no species recall drop
    beyond ``tolerance``; returns (passed, reasons), passed None without a reference.

    A drop also has to lose more than ``noise_images`` test images of that species to count:
    held-out sets of a few dozen photos per species move in steps of several points.
    """
    if ref is None:
        return None, ["no deployed model to compare with (first model)"]
    reasons: list[str] = []
    ok = True
    if ref.negatives_total == 0:
        ok = False
        reasons.append("no field negatives to compare on: pull and review samples the owner "
                       "rejected first (or pass --negatives DIR)")
    elif cand.false_alerts < ref.false_alerts:
        reasons.append(f"false alerts on {ref.negatives_total} field negatives: "
                       f"{ref.false_alerts} -> {cand.false_alerts}")
    else:
        ok = False
        reasons.append(f"false alerts on {ref.negatives_total} field negatives did not go down "
                       f"({ref.false_alerts} -> {cand.false_alerts})")
    ok = _recall_held(ref.confusion, ref.recall, cand.recall, ref.species, "held-out device "
                      "frames", tolerance, noise_images, reasons) and ok
    ok = _recall_held(ref.device_confusion, ref.device_recall, cand.device_recall,
                      [n for n in ref.device_recall if n not in ref.negatives],
                      "the device's own positives", tolerance, noise_images, reasons) and ok
    if ok:
        reasons.append(f"no species recall fell by more than {tolerance:.1%}")
    return ok, reasons


def _recall_held(confusion: dict[str, dict[str, int]], before_recall: dict[str, float],
                 after_recall: dict[str, float], species: Sequence[str], where: str,
                 tolerance: float, noise_images: int, reasons: list[str]) -> bool:
    """Whether no species' recall on one test set fell beyond tolerance (reasons appended)."""
    ok = True
    for name in species:
        before, after = before_recall[name], after_recall.get(name, 0.0)
        lost = round((before - after) * sum(confusion[name].values()))
        if before - after > tolerance + 1e-9 and lost > noise_images:
            ok = False
            reasons.append(f"recall of {name} on {where} fell {before:.1%} -> {after:.1%} "
                           f"({lost} images; more than {tolerance:.1%})")
        elif before - after > tolerance + 1e-9:
            reasons.append(f"recall of {name} on {where} fell {before:.1%} -> {after:.1%}, "
                           f"but by {lost} image(s) only: within noise")
    return ok
