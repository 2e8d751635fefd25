"""The task decision: the best species of interest against everything else, summed.

A model's raw softmax answers a different question from the owner's. SqueezeNet spreads a
backlit titmouse over "langur", "sloth bear" and "indri"; AIY Birds V1 knows 964 species, most
of which never visit a given feeder. Taken raw, the margin between two mammals looks like
doubt and a flamingo at a Minnesota feeder alerts. So every stage decides on the *task*
instead:

- the **species of interest**: the bundle's labels that are not ``negative_labels``, narrowed
  by the owner's allow-list (``visits.species``) and block-list (``visits.exclude_species``),
  matched by label, common or scientific name, case-insensitive;
- one **negative** contender: the summed probability of every other class (the bundle's
  negatives and every species folded out), named by the bundle's generic negative label
  (``other``, ``background``...) and never by an arbitrary raw class.

The decision is the top contender; its margin is how far ahead it is of the next one (another
species, or the summed negative). :class:`Task` is built once per model (the classifier owns
it) and costs one gather and one sum per frame.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from feederd.bundle import Bundle
from feederd.types import Decision

logger = logging.getLogger(__name__)

GENERIC_NEGATIVES = ("other", "background", "nothing", "none", "not_a_bird")
"""Catch-all negative labels, in order of preference, a bundle may name."""
DEFAULT_NEGATIVE = "other"


def generic_negative(negative_labels: Collection[str]) -> str:
    """The class a negative is taught as: the bundle's catch-all, else ``other`` (the class
    feeder-sync adds when a model lacks one)."""
    for name in GENERIC_NEGATIVES:
        if name in negative_labels:
            return name
    lowered = {name.lower(): name for name in negative_labels}
    for name in GENERIC_NEGATIVES:
        if name in lowered:
            return lowered[name]
    return DEFAULT_NEGATIVE


def normalise_name(name: str) -> str:
    """``"Tufted_Titmouse"``, ``"tufted-titmouse"`` and ``" tufted  titmouse"`` compare equal."""
    return re.sub(r"[\s_\-]+", " ", name).strip().casefold()


@dataclass(frozen=True)
class SpeciesList:
    """The owner's local species lists, resolved against one model's labels."""

    allowed: frozenset[str] | None  # None: no allow-list (every species of the model)
    blocked: frozenset[str]
    unknown: dict[str, list[str]] = field(default_factory=dict)  # config key -> names


def resolve_species(labels: Iterable[str], names: Mapping[str, Iterable[str]],
                    allow: Iterable[str], block: Iterable[str], *,
                    allow_key: str = "visits.species",
                    block_key: str = "visits.exclude_species") -> SpeciesList:
    """Match the owner's names to labels; names that match nothing are reported per key.

    ``names`` maps a label to its other names (common, scientific).
    """
    index: dict[str, set[str]] = {}
    for label in labels:
        for alias in (label, *names.get(label, ())):
            if alias:
                index.setdefault(normalise_name(alias), set()).add(label)
    unknown: dict[str, list[str]] = {}

    def match(key: str, wanted: Iterable[str]) -> set[str]:
        found: set[str] = set()
        for name in wanted:
            hits = index.get(normalise_name(name))
            if hits:
                found |= hits
            else:
                unknown.setdefault(key, []).append(name)
        return found

    allow = list(allow)
    allowed = frozenset(match(allow_key, allow)) if allow else None
    blocked = frozenset(match(block_key, block))
    return SpeciesList(allowed, blocked, unknown)


class Task:
    """Raw classes -> "species of interest" or "negative", and the decision over them."""

    def __init__(self, labels: Iterable[str], negative_labels: Collection[str], *,
                 species: SpeciesList | None = None, version: str = "") -> None:
        self.labels = tuple(labels)
        self.negative_label = generic_negative(negative_labels)
        candidates = [name for name in self.labels if name not in negative_labels]
        chosen = species or SpeciesList(None, frozenset())
        if chosen.allowed is not None:
            candidates = [name for name in candidates if name in chosen.allowed]
        self.species = tuple(name for name in candidates if name not in chosen.blocked)
        self._species_set = frozenset(self.species)
        position = {name: i for i, name in enumerate(self.labels)}
        self._species_idx = np.array([position[n] for n in self.species], np.intp)
        negative = np.ones(len(self.labels), bool)
        negative[self._species_idx] = False
        self._negative_idx = np.flatnonzero(negative)
        self.folded = len(self.labels) - len(negative_labels) - len(self.species)
        self.unknown = chosen.unknown
        self._report(chosen, version)

    @classmethod
    def for_bundle(cls, bundle: Bundle, allow: Iterable[str] = (),
                   block: Iterable[str] = ()) -> Task:
        """The task of one model under the owner's species lists (names matched here)."""
        names = {label: [n for n in (bundle.display_names.get(label),
                                     bundle.scientific_names.get(label)) if n]
                 for label in bundle.labels}
        species = resolve_species(bundle.labels, names, allow, block)
        return cls(bundle.labels, bundle.negative_labels, species=species,
                   version=bundle.version)

    def is_species(self, label: str) -> bool:
        """Whether ``label`` is a species of interest (it can win a decision and alert)."""
        return label in self._species_set

    def decide(self, probs: np.ndarray) -> Decision:
        """The best species against the summed negatives, and the margin to the runner-up."""
        negative = float(probs[self._negative_idx].sum()) if self._negative_idx.size else 0.0
        if not self.species:
            return Decision(self.negative_label, negative, negative, False)
        scores = probs[self._species_idx]
        best = int(np.argmax(scores))
        top = float(scores[best])
        if top > negative:
            second = float(np.partition(scores, -2)[-2]) if scores.size > 1 else 0.0
            return Decision(self.species[best], top, top - max(second, negative), True)
        return Decision(self.negative_label, negative, negative - top, False)

    def _report(self, chosen: SpeciesList, version: str) -> None:
        model = f"model {version}" if version else "the model"
        for key, names in chosen.unknown.items():
            logger.warning("%s: %s: not a label, common or scientific name of %s; check the "
                           "spelling ('feederd species' lists the names)", key,
                           ", ".join(repr(n) for n in names), model)
        if chosen.allowed is not None and not self.species:
            logger.error("visits.species leaves no species of interest in %s: nothing will "
                         "alert", model)
        elif self.folded:
            logger.info("%d species of %s fold into %r (local species lists)", self.folded,
                        model, self.negative_label)
