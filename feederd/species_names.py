"""Stable labels, common names and scientific names from a classifier's label file.

TFLite bird classifiers ship one line per output: AIY Birds V1 gives scientific names only
("Cyanocitta cristata"), the iNaturalist model "Scientific name (Common Name)". A bundle needs a
stable machine label per class (the key of votes, replies, the spool and allow-lists), plus the
names people read. The rule, kept stable so labels survive a re-conversion and agree between
the two models:

- the label is the **common name** folded to ASCII, lower case, apostrophes dropped and every
  other run of non-alphanumerics turned into ``_`` ("Cassin's Finch" -> ``cassins_finch``,
  "Black-capped Chickadee" -> ``black_capped_chickadee``);
- a class without a known common name uses its scientific name the same way
  (``haemorhous_cassinii``); a label that would repeat gets the scientific name appended;
- a background line ("None", "background", an empty line) becomes ``background``, the
  bundle's negative label.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

BACKGROUND = "background"
_BACKGROUND_LINES = frozenset({"", "none", "background", "__background__", "nothing"})
# "Scientific name (Common Name)": the scientific part never contains a parenthesis, the
# common part may ("Northern Harrier (American)").
_WITH_COMMON = re.compile(r"^(?P<sci>[^()]+?)\s+\((?P<common>.+)\)$")
# A bare line is taken for a scientific name only when it looks like one ("Genus species").
_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")
_BINOMIAL = re.compile(r"^[A-Z][a-z-]+(\s+[a-z×.-]+)+$")


@dataclass(frozen=True)
class SpeciesNames:
    """Per output index: the stable label, the display name and the scientific name."""

    labels: tuple[str, ...]
    display_names: dict[str, str]
    scientific_names: dict[str, str]
    negative_labels: tuple[str, ...]


def snake_case(name: str) -> str:
    """``"Cassin's Finch"`` -> ``cassins_finch``; ``×`` (hybrids) becomes ``x``."""
    folded = unicodedata.normalize("NFKD", name.replace("×", " x "))
    ascii_text = folded.encode("ascii", "ignore").decode().lower()
    ascii_text = re.sub(r"['’`]", "", ascii_text)
    return re.sub(r"[^a-z0-9]+", "_", ascii_text).strip("_")


def split_line(line: str) -> tuple[str, str | None]:
    """``(scientific, common)`` of one label line; ``common`` is None when not given."""
    text = line.strip()
    match = _WITH_COMMON.match(text)
    if match:
        return match["sci"].strip(), match["common"].strip()
    return text, None


def common_names(lines: Iterable[str]) -> dict[str, str]:
    """Scientific name (case-folded) -> common name, from "Scientific (Common)" lines."""
    names: dict[str, str] = {}
    for line in lines:
        scientific, common = split_line(line)
        if common:
            names[scientific.casefold()] = common
    return names


def species_names(lines: Sequence[str], extra_common: Mapping[str, str] | None = None,
                  negative: Iterable[str] = ()) -> SpeciesNames:
    """Labels and names for label-file ``lines`` (one per output, in order).

    ``extra_common`` maps case-folded scientific names to common names for files that give
    scientific names only (AIY Birds V1 with the iNaturalist model's names). ``negative``
    names further lines (as written) that mean "nothing of interest".
    """
    extra = dict(extra_common or {})
    negative_lines = {item.strip().casefold() for item in negative}
    labels: list[str] = []
    display: dict[str, str] = {}
    scientific: dict[str, str] = {}
    negatives: list[str] = []
    for line in lines:
        sci, common = split_line(line)
        if sci.casefold() in _BACKGROUND_LINES:
            label = _unique(BACKGROUND, "", labels)
            negatives.append(label)
            labels.append(label)
            continue
        common = common or extra.get(sci.casefold())
        label = _unique(snake_case(common or sci), snake_case(sci), labels)
        labels.append(label)
        display[label] = common or sci
        if common or _BINOMIAL.match(sci):
            scientific[label] = sci
        if line.strip().casefold() in negative_lines or label in negative_lines:
            negatives.append(label)
    return SpeciesNames(tuple(labels), display, scientific, tuple(negatives))


def _unique(label: str, suffix: str, taken: Sequence[str]) -> str:
    label = label or "class"
    if label not in taken:
        return label
    candidate = f"{label}_{suffix}" if suffix else label
    index = 2
    while candidate in taken:
        candidate = f"{label}_{index}"
        index += 1
    logger.info("label %s repeats; using %s", label, candidate)
    return candidate


def read_label_lines(text: str) -> list[str]:
    """The lines of a label file: one per class, a trailing newline does not add a class.

    Literal ``\\xNN`` escapes are decoded: the iNaturalist model's file writes the hybrid
    sign as the four characters ``\\xd7`` where AIY's has ``×``, and the names must match.
    """
    text = _ESCAPE.sub(lambda match: chr(int(match[1], 16)), text)
    lines = text.splitlines()
    while lines and not lines[-1].strip() and len(lines) > 1:
        lines.pop()
    return lines
