"""feeder-sync review: the owner's decisions, interactive or scripted."""

from __future__ import annotations

from sync.conftest import Setup
from sync.helpers import add_samples, jpeg, photo, run_json, run_sync, spool_dir


def pull_mixed(setup: Setup) -> list[dict[str, object]]:
    """One owner-labelled, one pseudo-labelled and two unlabelled samples."""
    add_samples(spool_dir(setup.tmp), [
        (jpeg(photo("squirrel", 1)), "other", "user", ["rejected"]),
        (jpeg(photo("robin", 2)), "robin", "pseudo", ["flicker_positive"]),
        (jpeg(photo("jay", 3)), None, None, ["low_margin"]),
        (jpeg(photo("squirrel", 4)), None, None, ["low_margin"]),
    ])
    run_sync(setup.config, "pull")
    return run_json(setup.config, "review", "--list")


def status(setup: Setup) -> dict[str, object]:
    return run_json(setup.config, "status")[0]


class TestReview:
    def test_the_list_shows_only_samples_that_need_a_decision(self, setup: Setup) -> None:
        pending = pull_mixed(setup)
        assert [p["reasons"] for p in pending] == [["flicker_positive"], ["low_margin"],
                                                   ["low_margin"]]
        assert status(setup)["labelled"] == {"samples": 1, "pending_review": 3}

    def test_labels_and_exclusions_from_a_script(self, setup: Setup) -> None:
        pending = pull_mixed(setup)
        jay, squirrel = pending[1]["id"], pending[2]["id"]
        out = run_json(setup.config, "review", "--label", f"{jay}=jay", "--exclude",
                       str(squirrel))
        assert out["labelled"] == [str(jay)] and out["excluded"] == [str(squirrel)]
        assert out["remaining"] == 1

    def test_accept_pseudo_takes_the_devices_pseudo_labels(self, setup: Setup) -> None:
        pull_mixed(setup)
        out = run_json(setup.config, "review", "--accept-pseudo")
        assert len(out["accepted"]) == 1
        assert status(setup)["labelled"]["samples"] == 2

    def test_an_interactive_session_reads_answers(self, setup: Setup) -> None:
        pull_mixed(setup)
        proc = run_sync(setup.config, "review", "--interactive", stdin="a\nl jay\nn\n")
        assert "[1/3]" in proc.stdout and "device said" in proc.stdout
        assert status(setup)["labelled"] == {"samples": 4, "pending_review": 0}

    def test_quitting_keeps_the_decisions_made_so_far(self, setup: Setup) -> None:
        pull_mixed(setup)
        run_sync(setup.config, "review", "--interactive", stdin="x\nq\n")
        assert status(setup)["labelled"]["pending_review"] == 2

    def test_a_label_nobody_knows_is_refused_with_the_closest_known_one(self, setup: Setup
                                                                         ) -> None:
        pending = pull_mixed(setup)
        proc = run_sync(setup.config, "review", "--label", f"{pending[1]['id']}=jya",
                        check=False)
        assert proc.returncode == 2 and "did you mean 'jay'" in proc.stderr
        assert "--new-label jya" in proc.stderr
        assert status(setup)["labelled"]["pending_review"] == 3

    def test_a_new_label_named_with_new_label_is_accepted_with_a_warning(self, setup: Setup
                                                                        ) -> None:
        pending = pull_mixed(setup)
        proc = run_sync(setup.config, "review", "--label", f"{pending[2]['id']}=squirrel",
                        "--new-label", "squirrel")
        assert "--allow-new-class" in proc.stderr

    def test_a_typo_at_the_prompt_becomes_a_label_only_when_confirmed(self, setup: Setup
                                                                     ) -> None:
        pull_mixed(setup)
        proc = run_sync(setup.config, "review", "--interactive",
                        stdin="s\nl jya\n\nl jay\nl squirrel\ny\n")
        assert "'jya' is not a known label (did you mean jay?)" in proc.stdout
        labels = {s["id"]: s.get("label") for s in run_json(setup.config, "review", "--list")}
        assert len(labels) == 1  # skipped the first; jay and squirrel for the other two
        assert status(setup)["labelled"] == {"samples": 3, "pending_review": 1}

    def test_accept_is_offered_only_where_there_is_a_pseudo_label(self, setup: Setup) -> None:
        pull_mixed(setup)
        proc = run_sync(setup.config, "review", "--interactive", stdin="s\na\nq\n")
        prompts = [line for line in proc.stdout.split("> ") if "[n]othing" in line]
        assert "[a]ccept robin" in prompts[0] and "[a]ccept" not in prompts[1]
        assert "? answer n, l NAME, x, s or q" in proc.stdout

    def test_an_unknown_sample_id_is_bad_input(self, setup: Setup) -> None:
        pull_mixed(setup)
        proc = run_sync(setup.config, "review", "--label", "999=jay", check=False)
        assert proc.returncode == 2 and "no pulled sample with id 999" in proc.stderr

    def test_a_malformed_label_argument_is_bad_usage(self, setup: Setup) -> None:
        proc = run_sync(setup.config, "review", "--label", "jay", check=False)
        assert proc.returncode == 2 and "ID=LABEL" in proc.stderr

    def test_an_invalid_label_name_is_refused(self, setup: Setup) -> None:
        pending = pull_mixed(setup)
        proc = run_sync(setup.config, "review", "--label", f"{pending[1]['id']}=bad label",
                        check=False)
        assert proc.returncode == 2 and "not a valid class name" in proc.stderr
