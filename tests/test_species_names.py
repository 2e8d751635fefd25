"""Stable labels and the names people read, from the label files of TFLite bird models."""

from __future__ import annotations

from feederd.species_names import (
    common_names,
    read_label_lines,
    snake_case,
    species_names,
    split_line,
)


class TestSnakeCase:
    def test_apostrophes_vanish_and_other_punctuation_becomes_underscores(self) -> None:
        assert snake_case("Cassin's Finch") == "cassins_finch"
        assert snake_case("Black-capped Chickadee") == "black_capped_chickadee"

    def test_accents_fold_to_ascii_and_the_hybrid_sign_to_x(self) -> None:
        assert snake_case("Rüppell's Vulture") == "ruppells_vulture"
        assert snake_case("Mallard × Pacific Black Duck") == "mallard_x_pacific_black_duck"


class TestLines:
    def test_scientific_and_common_parts_split_even_with_nested_brackets(self) -> None:
        assert split_line("Cyanocitta cristata (Blue Jay)") == ("Cyanocitta cristata",
                                                                 "Blue Jay")
        assert split_line("Circus cyaneus hudsonius (Northern Harrier (American))") == (
            "Circus cyaneus hudsonius", "Northern Harrier (American)")
        assert split_line("Cyanocitta cristata") == ("Cyanocitta cristata", None)

    def test_a_trailing_newline_adds_no_class_and_escapes_are_decoded(self) -> None:
        assert read_label_lines("a\nb\n") == ["a", "b"]
        assert read_label_lines("Anas a \\xd7 b\nNone") == ["Anas a × b", "None"]


class TestSpeciesNames:
    def test_labels_come_from_common_names_and_keep_the_scientific_one(self) -> None:
        names = species_names(["Cyanocitta cristata (Blue Jay)", "Baeolophus bicolor "
                               "(Tufted Titmouse)", "background"])
        assert names.labels == ("blue_jay", "tufted_titmouse", "background")
        assert names.display_names == {"blue_jay": "Blue Jay",
                                       "tufted_titmouse": "Tufted Titmouse"}
        assert names.scientific_names["tufted_titmouse"] == "Baeolophus bicolor"
        assert names.negative_labels == ("background",)

    def test_scientific_only_lines_borrow_common_names_from_another_file(self) -> None:
        extra = common_names(["Cyanocitta cristata (Blue Jay)"])
        names = species_names(["Cyanocitta cristata", "Pica nuttalli", "None"], extra)
        assert names.labels == ("blue_jay", "pica_nuttalli", "background")
        assert names.display_names["pica_nuttalli"] == "Pica nuttalli"
        assert names.scientific_names == {"blue_jay": "Cyanocitta cristata",
                                          "pica_nuttalli": "Pica nuttalli"}

    def test_plain_names_are_not_mistaken_for_scientific_ones(self) -> None:
        names = species_names(["blue jay", "cardinal", "other"], negative=["other"])
        assert names.labels == ("blue_jay", "cardinal", "other")
        assert names.scientific_names == {} and names.negative_labels == ("other",)

    def test_a_repeated_common_name_gets_its_scientific_name_appended(self) -> None:
        names = species_names(["Corvus a (Crow)", "Corvus b (Crow)"])
        assert names.labels == ("crow", "crow_corvus_b")
