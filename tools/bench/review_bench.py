"""First paint of the review page (``feeder-sync review --web``) in a real Chromium.

Two real servers (the ``feeder-sync`` CLI as subprocesses) serve two workspaces built in a
temporary folder: one with 500 pulled samples waiting for review (100 visits x 5, real small
JPEGs), one with none (the page's own cost: HTML, CSS, scripts, the empty samples API call).
A headless Chromium with a fresh profile loads each page in turn, interleaved, the browser
cache disabled (every load is a first visit) - after one warm-up load of each. Per load, from
the page's Performance API:

- ``first-contentful-paint``: the header and toolbar on screen (the target: < 1 s);
- ``grid-painted``: the frame after every card of the grid is in the DOM (500 cards);
- ``images``: the first 20 thumbnails decoded.

    python3 tools/bench/review_bench.py [--repeat 7] [--samples 500] [--raw]

Needs /usr/bin/chromium and /usr/bin/chromedriver (Debian: chromium, chromium-driver).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from sync.browser import ReviewServer, chromium  # noqa: E402
from sync.helpers import pulled_samples, sync_config  # noqa: E402

from feederd.sync.workspace import Workspace  # noqa: E402

METRICS = ("first-contentful-paint", "grid-painted", "images")
PER_VISIT = 5
READ = """
const done = arguments[arguments.length - 1];
const until = () => {
  const painted = performance.getEntriesByName("grid-painted")[0];
  const fcp = performance.getEntriesByName("first-contentful-paint")[0];
  if (!painted || !fcp) return setTimeout(until, 5);
  const images = [...document.querySelectorAll(".card img")].slice(0, 20);
  Promise.all(images.map((i) => i.decode().catch(() => null))).then(() => {
    done({"first-contentful-paint": fcp.startTime,
          "grid-painted": painted.startTime, "images": performance.now(),
          "cards": document.querySelectorAll(".card").length});
  });
};
until();
"""


def workspace(root: Path, samples: int) -> Path:
    """A feeder-sync config whose workspace holds ``samples`` pending samples."""
    ws = Workspace(root / "workspace", "feeder").create()
    ws.update_state(init={"labels": ["jay", "other", "robin"], "negative_labels": ["other"]})
    if samples:
        pulled_samples(ws.dir, samples // PER_VISIT, PER_VISIT, size=128)
    return sync_config(root)


def load(driver: Any, url: str) -> dict[str, float]:
    driver.get("about:blank")
    driver.get(url)
    result: dict[str, float] = driver.execute_async_script(READ)
    return result


def summary(values: list[float]) -> str:
    return (f"min {min(values):7.1f}  median {statistics.median(values):7.1f}  "
            f"max {max(values):7.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--raw", action="store_true", help="also print every load")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="review-bench-") as tmp:
        root = Path(tmp)
        servers = {"empty": ReviewServer(workspace(root / "empty", 0)),
                   f"{args.samples} samples": ReviewServer(workspace(root / "full",
                                                                     args.samples))}
        driver = chromium(root / "profile")
        driver.set_script_timeout(60)
        driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
        try:
            results: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
            for server in servers.values():
                load(driver, server.url)  # warm-up: the server's first request, the browser
            for _ in range(args.repeat):
                for name, server in servers.items():
                    results[name].append(load(driver, server.url))
        finally:
            driver.quit()
            for server in servers.values():
                server.kill()
    if args.raw:
        print(results)
    report(results, args.repeat)
    return 0


def report(results: dict[str, list[dict[str, float]]], repeat: int) -> None:
    print(f"review page, headless Chromium, cache disabled, {repeat} interleaved loads each")
    for name, runs in results.items():
        print(f"{name} ({int(runs[0]['cards'])} cards in the grid)")
        for metric in METRICS:
            print(f"  {metric:24s} {summary([r[metric] for r in runs])}")
    empty, full = results.values()
    for metric in METRICS[:2]:
        ratio = statistics.median(r[metric] for r in full) / statistics.median(
            r[metric] for r in empty)
        print(f"ratio full / empty, {metric}: {ratio:.2f}")
    fcp = statistics.median(r["first-contentful-paint"] for r in full)
    print(f"target first paint < 1000 ms: {'met' if fcp < 1000 else 'NOT met'} ({fcp:.0f} ms)")


if __name__ == "__main__":
    sys.exit(main())
