"""The ``feederd`` command line.

Exit codes: 0 success, 2 bad usage or invalid config/input (the message names the key or
file), 1 anything else. ``--json`` switches every listing to machine-readable output.

This module holds the entry point, the parser and the small commands; the larger groups live
beside it: :mod:`feederd.cli_model` (``model``, ``species``), :mod:`feederd.cli_spool`
(``spool``), and what they all share (output, settings) in :mod:`feederd.cli_common`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feederd import __version__
from feederd.cli_common import emit, settings_from_args
from feederd.cli_model import add_model_parser, cmd_species
from feederd.cli_spool import add_spool_parser
from feederd.config import load_settings
from feederd.errors import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    ConfigError,
    FeederError,
    cli_failure,
)

if TYPE_CHECKING:
    import numpy as np

    from feederd.mqtt.feedback import Verdict

logger = logging.getLogger(__name__)


# --- run / demo -------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    from feederd.daemon import Daemon
    from feederd.logsetup import setup_logging

    settings = settings_from_args(args)
    setup_logging(settings.logging)
    config = Path(args.config) if args.config else None
    return Daemon(settings, config_path=config).run()


def cmd_demo(args: argparse.Namespace) -> int:
    """Replay the bundled clip through the bundled model; alerts as JSON lines on stdout,
    then a summary line; the spool stays in a folder the user can look at."""
    from feederd.demo import demo_state_dir, fresh_state_dir

    if args.state_dir:
        return _demo(args, Path(args.state_dir))
    return _demo(args, fresh_state_dir(demo_state_dir()))


def _demo(args: argparse.Namespace, state: Path) -> int:
    from feederd import demo
    from feederd.assets import demo_model_path
    from feederd.daemon import Daemon
    from feederd.logsetup import setup_logging
    from feederd.spool import DB_NAME, Spool

    overrides: dict[str, Any] = {
        "state_dir": str(state),
        "camera": {"kind": "auto", "source": "demo", "realtime": args.realtime,
                   "loop": args.loop},
        "classifier": {"model": str(demo_model_path())},
        "mqtt": {"enabled": args.mqtt},
    }
    settings = settings_from_args(args, **overrides)
    setup_logging(settings.logging)
    sink = demo.DemoSink(sys.stdout, args.visits, demo.Truth.load())
    code = Daemon(settings, alert_sink=sink).run()
    samples = 0
    if (settings.spool_dir / DB_NAME).exists():
        with Spool(settings.spool_dir, settings.spool, writer=False) as spool:
            samples = int(spool.stats()["samples"])
    result = demo.summary(sink, settings.spool_dir, samples)
    emit(result, True)
    sys.stderr.write(demo.summary_text(result, state) + "\n")
    return code


def cmd_check_config(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else (Path(args.config) if args.config else None)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        if args.json:  # scripts get the problems on stdout as well; stderr as always
            emit({"valid": False, "file": str(path or "defaults"), "errors": exc.problems},
                  True)
        raise
    if args.json:
        emit(json.loads(settings.model_dump_json()), True)
    else:
        sys.stdout.write(f"{path or 'defaults'}: configuration is valid\n")
    return EXIT_OK


# --- classify / reply -------------------------------------------------------------------------

def cmd_classify(args: argparse.Namespace) -> int:
    from feederd.classifier import Classifier
    from feederd.daemon import resolve_model_path

    settings = settings_from_args(args)
    for name in args.images:  # a typo in the last name should not wait for the model
        if not Path(name).is_file():
            raise FeederError(f"{name}: no such image file")
    model = resolve_model_path(settings)
    _warn_if_demo_model(model)
    classifier = Classifier(model, settings.classifier.threads)
    bundle = classifier.bundle
    results = []
    for name in args.images:
        prediction, _ = classifier.classify(_read_image(name), None, 1.0, args.top_k)
        label = prediction.label
        results.append({"image": name, "label": label,
                        "display_name": bundle.display_name(label),
                        "scientific_name": bundle.scientific_name(label),
                        "confidence": round(prediction.confidence, 4),
                        "margin": round(prediction.margin, 4),
                        "top": dict(zip(prediction.labels,
                                        (round(s, 4) for s in prediction.scores),
                                        strict=True))})
    emit(results, args.json, lambda rs: "\n".join(
        f"{r['image']}: {_named(r['display_name'], r['label'])} ({r['confidence']:.2f}, "
        f"margin {r['margin']:.2f})" for r in rs))
    return EXIT_OK


def _named(display: str, label: str) -> str:
    """"Tufted Titmouse [tufted_titmouse]"; a bare label when the model has no names."""
    return label if display in (label, label.replace("_", " ")) else f"{display} [{label}]"


def _warn_if_demo_model(model: Path) -> None:
    from feederd.assets import is_demo_model

    if is_demo_model(model):
        sys.stderr.write("feederd: warning: classifying with the bundled demo model, which "
                         "knows cartoon birds only: its labels for real photos mean nothing. "
                         "Install a real model (`feederd model install FILE`) or set "
                         "classifier.model\n")


def _read_image(name: str) -> np.ndarray:
    """Decode an image file, or raise naming it (OpenCV's own imread only warns)."""
    import cv2
    import numpy as np

    try:
        data = np.fromfile(name, np.uint8)
    except OSError as exc:
        raise FeederError(f"{name}: cannot read: {exc.strerror}") from exc
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise FeederError(f"{name}: not an image OpenCV can decode (JPEG, PNG, BMP, WebP, ...)")
    return image


def cmd_reply(args: argparse.Namespace) -> int:
    from feederd.mqtt import send_reply

    settings = settings_from_args(args)
    verdict: Verdict = "not_a_bird" if args.not_a_bird else "correct" if args.correct \
        else "species"
    result = send_reply(settings.mqtt, settings.mqtt_password(), args.event_id, verdict,
                        args.species, timeout=args.timeout)
    emit({"event_id": result.event_id or args.event_id, "verdict": verdict,
           "label": result.label or args.species, "result": result.result,
           "detail": result.detail}, args.json,
          lambda r: f"{r['event_id']}: {r['result'].replace('_', ' ')} ({r['detail']})")
    return EXIT_OK if result.ok else EXIT_USAGE


def cmd_doctor(args: argparse.Namespace) -> int:
    from feederd.doctor import render, run_checks

    settings = settings_from_args(args)
    results = run_checks(settings)
    if args.json:
        emit([r.as_dict() for r in results], True)
    else:
        sys.stdout.write(render(results) + "\n")
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAIL


def cmd_suggest_masks(args: argparse.Namespace) -> int:
    """Overlay masks (captions, timestamps) found in clips of this camera, as config lines."""
    from feederd.overlays import read_grey_frames, suggest_masks

    height = settings_from_args(args).motion.height
    found = suggest_masks([read_grey_frames(Path(clip), height) for clip in args.clips])
    if args.json:
        emit({"ignore_masks": found.masks, "frames": found.frames,
               "isolated_events": found.isolated_events}, True)
        return EXIT_OK
    sys.stdout.write(f"# {len(found.masks)} overlay region(s) in {found.frames} frames: pixels "
                     "that change in isolated frames only.\n# Check them, then put these "
                     "lines in the config (motion ignores what they cover):\n"
                     f"{found.toml()}\n")
    return EXIT_OK


# --- parser -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    config_help = ("config file (default /etc/feederd/feederd.toml if it exists, else "
                   "built-in defaults)")
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a --config given before the command is not reset by the subcommand's default.
    common.add_argument("--config", "-c", default=argparse.SUPPRESS, help=config_help)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    parser = argparse.ArgumentParser(prog="feederd", description="Bird-feeder camera daemon.")
    parser.add_argument("--version", action="version", version=f"feederd {__version__}")
    parser.add_argument("--config", "-c", help=config_help)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str
            ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    add("run", cmd_run, "run the daemon (camera, classifier, MQTT)")
    demo = add("demo", cmd_demo, "replay the bundled demo clip through the demo model and "
               "print each alert as a JSON line")
    demo.add_argument("--loop", action="store_true", help="repeat the clip until interrupted")
    demo.add_argument("--realtime", action="store_true", help="replay at the clip's speed")
    demo.add_argument("--visits", action="store_true", help="also print visit summaries")
    demo.add_argument("--mqtt", action="store_true", help="also publish to the [mqtt] broker")
    demo.add_argument("--state-dir", help="keep spool and state here (default: "
                      "~/.local/state/feederd-demo, emptied at each run)")
    check = add("check-config", cmd_check_config, "validate a config file and exit")
    check.add_argument("file", nargs="?", help="config file to check")
    classify = add("classify", cmd_classify, "classify image files with the current model")
    classify.add_argument("images", nargs="+", metavar="IMAGE")
    classify.add_argument("--top-k", type=int, default=3)
    reply = add("reply", cmd_reply, "answer an alert over MQTT, as the owner would")
    reply.add_argument("event_id", metavar="EVENT_ID")
    verdict = reply.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--not-a-bird", action="store_true", help="the alert was wrong")
    verdict.add_argument("--correct", action="store_true", help="the alert was right")
    verdict.add_argument("--species", metavar="LABEL", help="it was this species instead")
    reply.add_argument("--timeout", type=float, default=10.0, metavar="S",
                       help="how long to wait for the device's answer (default 10 s)")
    add_spool_parser(sub, common)
    add_model_parser(sub, common)
    add("doctor", cmd_doctor, "check camera, model, broker, disk and clock; suggest fixes")
    add("species", cmd_species, "list the model's species (label, common and scientific "
        "name); * marks those visits.species / exclude_species keep")
    masks = add("suggest-masks", cmd_suggest_masks, "find burned-in captions and timestamps "
                "in clips of this camera and print motion.ignore_masks for them")
    masks.add_argument("clips", nargs="+", metavar="CLIP")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from feederd.config import LoggingConfig
    from feederd.logsetup import setup_logging

    setup_logging(LoggingConfig(level="WARNING"))
    try:
        return int(args.func(args))
    except (Exception, KeyboardInterrupt) as exc:  # one mapping for both CLIs: feederd.errors
        return cli_failure("feederd", args.command, exc)


if __name__ == "__main__":
    sys.exit(main())
