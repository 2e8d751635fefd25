"""The review page in a real Chromium: the owner labels pulled samples with the keyboard, the
decisions land in the workspace at once, and the last evaluation is one tab away."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from feederd.sync.samples import SampleIndex
from sync.browser import ReviewServer, chromium, require_chromium
from sync.helpers import (
    add_samples,
    jpeg,
    photo,
    pulled_samples,
    run_json,
    run_sync,
    spool_dir,
    sync_config,
)

pytestmark = pytest.mark.timeout(300)
WAIT = 20.0
PENDING = 12  # 4 visits x 3 samples


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, template: Path) -> Path:
    """A workspace whose retrained candidate was evaluated against the baseline, with the
    owner's rejected squirrels as field negatives (built once: real pull, train, evaluate)."""
    tmp = tmp_path_factory.mktemp("evaluated")
    shutil.copytree(template, tmp / "workspace", symlinks=True)
    config = sync_config(tmp)
    add_samples(spool_dir(tmp), [(jpeg(photo("squirrel", 700 + n)), "other", "user",
                                  ["rejected"]) for n in range(16)])
    run_sync(config, "pull")
    run_sync(config, "train")
    report = run_json(config, "evaluate")
    (tmp / "evaluate.json").write_text(json.dumps(report))
    return tmp / "workspace"


@dataclass
class Page:
    tmp: Path
    config: Path
    server: ReviewServer
    driver: Any
    evaluated: Path

    @property
    def workspace(self) -> Path:
        return self.tmp / "workspace" / "feeder"

    def restart(self) -> None:
        self.server.kill()
        self.server = ReviewServer(self.config)
        self.open()

    def open(self, hash_: str = "") -> None:
        self.driver.get(self.server.url + hash_)
        if not hash_:
            self.wait(lambda d: d.execute_script(
                "return document.querySelectorAll('.card').length") > 0, "the grid")

    def wait(self, condition: Any, what: str) -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, WAIT).until(condition, f"waited for {what}")

    def keys(self, *keys: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.driver).send_keys(*keys).perform()

    def js(self, script: str) -> Any:
        return self.driver.execute_script(script)

    def card_ids(self, visible_only: bool = True) -> list[str]:
        test = "!c.hidden" if visible_only else "true"
        return self.js(f"return [...document.querySelectorAll('.card')].filter(c => {test})"
                       ".map(c => c.dataset.id)")

    def pending_shown(self) -> int:
        return int(self.js("return Number(document.getElementById('counts').dataset.pending)"))

    def until_pending(self, count: int) -> None:
        self.wait(lambda d: self.pending_shown() == count, f"{count} left")

    def click_card(self, sample_id: str) -> None:
        self.driver.find_element("css selector", f".card[data-id='{sample_id}']").click()

    def records(self) -> dict[str, tuple[str | None, str | None]]:
        with SampleIndex(self.workspace / "samples.db") as index:
            return {s["id"]: (s["review_source"], s["review_label"]) for s in index.all()
                    if s["id"] in self.pending_ids}

    pending_ids: frozenset[str] = frozenset()


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    require_chromium()
    browser = chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture()
def page(tmp_path: Path, evaluated: Path, driver: Any) -> Iterator[Page]:
    shutil.copytree(evaluated, tmp_path / "workspace", symlinks=True)
    config = sync_config(tmp_path)
    rows = pulled_samples(tmp_path / "workspace" / "feeder", 4, 3, start_id=1000)
    page = Page(tmp_path, config, ReviewServer(config), driver, evaluated)
    page.pending_ids = frozenset(str(r["id"]) for r in rows)
    try:
        page.open()
        yield page
    finally:
        page.server.kill()


def pseudo_of(page: Page, sample_id: str) -> str | None:
    with SampleIndex(page.workspace / "samples.db") as index:
        sample = index.get(sample_id)
    return sample["label"] if sample and sample["label_source"] == "pseudo" else None


class TestKeyboard:
    def test_decisions_are_saved_at_once_and_survive_a_reload_and_a_killed_server(
            self, page: Page) -> None:
        ids = page.card_ids()
        assert len(ids) == PENDING and page.pending_shown() == PENDING
        page.keys("1")
        page.until_pending(11)
        page.keys("n")
        page.until_pending(10)
        page.keys("x")
        page.until_pending(9)
        with_pseudo = next(i for i in ids[3:] if pseudo_of(page, i))
        without = next(i for i in ids[3:] if not pseudo_of(page, i))
        accept = page.driver.find_element("css selector", "#toolbar button[data-do=accept]")
        page.click_card(without)
        assert accept.get_property("disabled")
        page.keys("a")
        page.wait(lambda d: "no pseudo-label here" in d.find_element("id", "toast").text,
                  "the refusal")
        page.click_card(with_pseudo)
        assert not accept.get_property("disabled")
        page.keys("a")
        page.until_pending(8)
        assert page.records()[with_pseudo] == ("accepted_pseudo", pseudo_of(page, with_pseudo))
        page.keys("u")
        page.until_pending(9)
        page.driver.save_screenshot(str(page.tmp / "review-page.png"))
        expected = {ids[0]: ("owner", "jay"), ids[1]: ("owner", "other"),
                    ids[2]: ("excluded", None)}
        decided = {k: v for k, v in page.records().items() if v[0]}
        assert decided == expected
        page.driver.refresh()
        page.wait(lambda d: len(page.card_ids()) == 9, "the 9 pending samples after reload")
        assert set(page.card_ids()).isdisjoint(expected)
        page.restart()
        assert page.pending_shown() == 9 and len(page.card_ids()) == 9
        assert {k: v for k, v in page.records().items() if v[0]} == expected

    def test_first_letters_pick_a_known_label_and_a_new_one_needs_confirming(
            self, page: Page) -> None:
        ids = page.card_ids()
        page.keys("r")
        page.wait(lambda d: d.find_element("id", "picker").get_attribute("open"), "picker")
        page.keys("\n")
        page.until_pending(11)
        page.keys("jya\n")
        page.wait(lambda d: d.find_element("id", "confirm-new").get_attribute("open"),
                  "the new-label question")
        assert "Did you mean “jay”" in page.driver.find_element("id", "confirm-text").text
        page.keys("n")
        page.keys("z", "ebra_finch\n")
        page.wait(lambda d: d.find_element("id", "confirm-new").get_attribute("open"),
                  "the new-label question")
        page.keys("y")
        page.until_pending(10)
        records = page.records()
        assert records[ids[0]] == ("owner", "robin")
        assert records[ids[1]] == ("owner", "zebra_finch")
        assert "zebra_finch" in page.driver.find_element("id", "label-keys").text

    def test_a_whole_visit_and_a_shift_range_take_one_key_and_undo_takes_them_back(
            self, page: Page) -> None:
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        ids = page.card_ids()
        page.keys("v", "2")
        page.until_pending(9)
        assert all(page.records()[i] == ("owner", "other") for i in ids[:3])
        ActionChains(page.driver).key_down(Keys.SHIFT).send_keys(
            Keys.ARROW_RIGHT, Keys.ARROW_RIGHT).key_up(Keys.SHIFT).send_keys("x").perform()
        page.until_pending(6)
        assert all(page.records()[i] == ("excluded", None) for i in ids[3:6])
        page.keys("u")
        page.until_pending(9)
        page.keys("u")
        page.until_pending(12)
        assert not any(source for source, _ in page.records().values())

    def test_the_mouse_selects_a_range_and_the_toolbar_decides(self, page: Page) -> None:
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        ids = page.card_ids()
        page.click_card(ids[4])
        card = page.driver.find_element("css selector", f".card[data-id='{ids[6]}']")
        ActionChains(page.driver).key_down(Keys.SHIFT).click(card).key_up(Keys.SHIFT).perform()
        page.driver.find_element("css selector", "#toolbar button[data-do=exclude]").click()
        page.until_pending(9)
        assert {i for i, (source, _) in page.records().items() if source} == set(ids[4:7])


class TestEvaluationView:
    def test_the_last_evaluation_shows_both_matrices_the_gate_and_the_false_alerts(
            self, page: Page) -> None:
        printed = json.loads((page.evaluated.parent / "evaluate.json").read_text())
        report = json.loads((Path(printed["report"]) / "report.json").read_text())
        assert report["reference"] and report["gate"] in ("pass", "fail")
        page.keys("E")
        page.wait(lambda d: d.find_elements("id", "gate"), "the gate")
        gate = page.driver.find_element("id", "gate").text
        assert gate == f"gate: {report['gate'].upper()}"
        assert len(page.driver.find_elements("css selector", "table.confusion")) == 2
        rows = page.driver.find_elements("css selector", "table.recall tr")
        assert len(rows) == 1 + len(report["candidate"]["recall"])
        behind = report["reference"]["false_alert_samples"]
        thumbs = page.driver.find_elements(
            "css selector", "section.false-alerts[data-role=deployed] .thumb")
        assert len(thumbs) == len(behind) > 0
        page.wait(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#evaluation-view img')]"
            ".every(i => i.complete && i.naturalWidth > 0)"),
            "every image")
        page.driver.save_screenshot(str(page.tmp / "evaluation-view.png"))
        thumbs[0].click()
        page.wait(lambda d: d.find_element("id", "lightbox").get_attribute("open"),
                  "the sample behind the false alert")
        text = page.driver.find_element("id", "lightbox-text").text
        assert text.startswith(f"sample {behind[0]['id']} ")
