"""The pulled samples' index and the label each sample trains with."""

from __future__ import annotations

from pathlib import Path

from feederd.sync.samples import SampleIndex, training_label

ROW = {"id": 7, "sha256": "a" * 64, "seq": 3, "size": 10, "file": "samples/x.jpg",
       "label": None, "label_source": None, "reasons": ["low_margin"], "probs": {"jay": 0.5}}


class TestSampleIndex:
    def test_a_resent_sample_is_updated_and_keeps_its_review(self, tmp_path: Path) -> None:
        with SampleIndex(tmp_path / "s.db") as index:
            assert index.commit([ROW], "spool-a", 3) == 1
            index.set_review("7", "a" * 64, "jay", "owner")
            assert index.commit([{**ROW, "seq": 9, "label": "other", "label_source": "user"}],
                                "spool-a", 9) == 0
            [row] = index.all()
            assert (row["seq"], row["label"], row["review_label"]) == (9, "other", "jay")
            assert index.cursor() == ("spool-a", 9)

    def test_the_owner_review_wins_and_pseudo_labels_wait(self) -> None:
        assert training_label({"label": "other", "label_source": "user"}) == "other"
        assert training_label({"label": "jay", "label_source": "pseudo"}) is None
        assert training_label({"label": "jay", "label_source": "pseudo"}, True) == "jay"
        assert training_label({"label": "other", "label_source": "user",
                               "review_source": "owner", "review_label": "jay"}) == "jay"
        assert training_label({"label": "other", "label_source": "user",
                               "review_source": "excluded", "review_label": None}) is None
