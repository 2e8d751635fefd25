"""The ``feederd`` command line.

Exit codes: 0 success, 2 bad usage or invalid config/input (the message names the key or
file), 1 anything else. ``--json`` switches every listing to machine-readable output.
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
from feederd.config import Settings, load_settings
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



def _emit(data: Any, as_json: bool, text: Callable[[Any], str] | None = None) -> None:
    """Print a result: JSON for machines, a readable rendering for people."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=None, sort_keys=True, default=str) + "\n")
    else:
        sys.stdout.write((text(data) if text else _table(data)) + "\n")


def _table(data: Any) -> str:
    if isinstance(data, dict):
        width = max((len(str(k)) for k in data), default=0)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in data.items())
    if isinstance(data, list):
        return "\n".join(_table(item) if isinstance(item, dict) else str(item)
                         for item in data)
    return str(data)


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    from feederd.logsetup import register_secret

    path = Path(args.config) if getattr(args, "config", None) else None
    settings = load_settings(path, **overrides)
    register_secret(settings.mqtt_password())
    return settings


# --- run / demo -------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    from feederd.daemon import Daemon
    from feederd.logsetup import setup_logging

    settings = _settings(args)
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
    settings = _settings(args, **overrides)
    setup_logging(settings.logging)
    sink = demo.DemoSink(sys.stdout, args.visits, demo.Truth.load())
    code = Daemon(settings, alert_sink=sink).run()
    samples = 0
    if (settings.spool_dir / DB_NAME).exists():
        with Spool(settings.spool_dir, settings.spool, writer=False) as spool:
            samples = int(spool.stats()["samples"])
    result = demo.summary(sink, settings.spool_dir, samples)
    _emit(result, True)
    sys.stderr.write(demo.summary_text(result, state) + "\n")
    return code


def cmd_check_config(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else (Path(args.config) if args.config else None)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        if args.json:  # scripts get the problems on stdout as well; stderr as always
            _emit({"valid": False, "file": str(path or "defaults"), "errors": exc.problems},
                  True)
        raise
    if args.json:
        _emit(json.loads(settings.model_dump_json()), True)
    else:
        sys.stdout.write(f"{path or 'defaults'}: configuration is valid\n")
    return EXIT_OK


# --- classify / reply -------------------------------------------------------------------------

def cmd_classify(args: argparse.Namespace) -> int:
    from feederd.classifier import Classifier
    from feederd.daemon import resolve_model_path

    settings = _settings(args)
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
    _emit(results, args.json, lambda rs: "\n".join(
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

    settings = _settings(args)
    verdict: Verdict = "not_a_bird" if args.not_a_bird else "correct" if args.correct \
        else "species"
    result = send_reply(settings.mqtt, settings.mqtt_password(), args.event_id, verdict,
                        args.species, timeout=args.timeout)
    _emit({"event_id": result.event_id or args.event_id, "verdict": verdict,
           "label": result.label or args.species, "result": result.result,
           "detail": result.detail}, args.json,
          lambda r: f"{r['event_id']}: {r['result'].replace('_', ' ')} ({r['detail']})")
    return EXIT_OK if result.ok else EXIT_USAGE


# --- spool ------------------------------------------------------------------------------------

def cmd_spool(args: argparse.Namespace) -> int:
    from feederd.spool import DB_NAME, Spool

    settings = _settings(args)
    if args.spool_cmd in ("ls", "stats") and not (settings.spool_dir / DB_NAME).exists():
        # Nothing stored yet is a state, not an error: a fresh install lists no samples.
        _emit([] if args.spool_cmd == "ls" else _no_spool_stats(settings), args.json)
        return EXIT_OK
    spool = Spool(settings.spool_dir, settings.spool, writer=False)
    try:
        if args.spool_cmd == "ls":
            _emit([s.manifest() for s in spool.ls(args.since, args.limit)], args.json)
        elif args.spool_cmd == "stats":
            _emit(spool.stats(), args.json)
        elif args.spool_cmd == "show":
            _emit(spool.get(args.id).manifest(), args.json)
        elif args.spool_cmd == "export":
            last = spool.export(args.since, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            logger.info("exported samples up to sequence %d", last)
        elif args.spool_cmd == "ack":
            _emit({"acked": spool.ack(args.seq), "seq": args.seq}, args.json)
    finally:
        spool.close()
    return EXIT_OK


def _no_spool_stats(settings: Settings) -> dict[str, Any]:
    """``spool stats`` before the first sample: zeros, and where the spool will be."""
    return {"spool_id": None, "samples": 0, "bytes": 0, "unsynced": 0, "labelled_user": 0,
            "labelled_pseudo": 0, "last_seq": 0, "max_bytes": settings.spool.max_bytes,
            "max_count": settings.spool.max_count,
            "note": f"no spool in {settings.spool_dir} yet; feederd creates it when it "
                    "stores its first sample"}


# --- model ------------------------------------------------------------------------------------

_LS_LABELS = 8  # labels shown per version in the text of `model ls` (--json has them all)

def cmd_model(args: argparse.Namespace) -> int:
    from feederd.modelstore import store_for

    if args.model_cmd == "import":
        return _model_import(args)
    settings = _settings(args)
    store = store_for(settings)  # compares a candidate on the spool's owner-labelled samples
    if args.model_cmd == "ls":
        entries = store.ls()
        _emit(entries, args.json, lambda es: "\n\n".join(
            [*([_model_ls_text(es)] if es else []), _serving(settings, not es)]))
    elif args.model_cmd == "install":
        _emit(store.install_file(Path(args.file), force=args.force), args.json)
    elif args.model_cmd == "rollback":
        _emit(store.rollback(), args.json)
    return EXIT_OK


def _model_ls_text(entries: list[dict[str, Any]]) -> str:
    """One block per version; labels as "Common Name (label)", the first few only."""
    blocks = []
    for entry in entries:
        shown = {k: v for k, v in entry.items() if k not in ("labels", "display_names")}
        labels, names = entry.get("labels", []), entry.get("display_names", {})
        named = [f"{names[label]} ({label})" if label in names else label
                 for label in labels[:_LS_LABELS]]
        more = f", ... and {len(labels) - _LS_LABELS} more" if len(labels) > _LS_LABELS else ""
        shown["labels"] = f"{len(labels)}: {', '.join(named)}{more}"
        blocks.append(_table(shown))
    return "\n\n".join(blocks) if blocks else "no models installed (feederd run uses the "\
        "bundled AIY Birds V1 model)"


def _model_import(args: argparse.Namespace) -> int:
    """TFLite -> bundle with the device-side converter (no TensorFlow), then validate it."""
    from feederd.classifier import validate_bundle
    from feederd.tflite_import import import_tflite

    source = Path(args.file)
    out = Path(args.out) if args.out else source.with_suffix(".onnx")
    if out.resolve() == source.resolve():
        raise FeederError(f"{out}: --out must differ from the TFLite file")
    import_tflite(source, out, labels=Path(args.labels) if args.labels else None,
                  names=Path(args.names) if args.names else None, version=args.version)
    bundle = validate_bundle(out)
    _emit({"file": str(out), "version": bundle.version, "labels": len(bundle.labels),
           "negative_labels": sorted(bundle.negative_labels)}, args.json,
          lambda d: f"wrote {d['file']}: {d['version']}, {d['labels']} labels; install it "
                    f"with: feederd model install {d['file']}")
    return EXIT_OK


def _serving(settings: Settings, nothing_installed: bool) -> str:
    """Which bundle ``feederd run`` loads, said plainly (an empty listing says nothing)."""
    from feederd.assets import is_demo_model
    from feederd.bundle import read_bundle
    from feederd.daemon import resolve_model_path

    path = resolve_model_path(settings)
    try:
        version = read_bundle(path).version
    except FeederError as exc:
        version = f"(unreadable: {exc})"
    why = ("classifier.model is set" if settings.classifier.model else
           f"no model is installed in {settings.models_dir}" if nothing_installed else
           "the installed 'current' model")
    demo = (" — the bundled demo model, cartoon birds only; install a real one with "
            "`feederd model install FILE`") if is_demo_model(path) else ""
    return f"serving: {version} from {path} ({why}){demo}"


def cmd_doctor(args: argparse.Namespace) -> int:
    from feederd.doctor import render, run_checks

    settings = _settings(args)
    results = run_checks(settings)
    if args.json:
        _emit([r.as_dict() for r in results], True)
    else:
        sys.stdout.write(render(results) + "\n")
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAIL


def cmd_species(args: argparse.Namespace) -> int:
    """The model's species with their names, and which the local lists keep (exit 2 when a
    listed name matches nothing, naming the key)."""
    from feederd.bundle import read_bundle
    from feederd.daemon import resolve_model_path
    from feederd.task import Task

    settings = _settings(args)
    bundle = read_bundle(resolve_model_path(settings))
    visits = settings.visits
    task = Task.for_bundle(bundle, visits.species, visits.exclude_species)
    rows = [{"label": label, "name": bundle.display_name(label),
             "scientific_name": bundle.scientific_name(label),
             "of_interest": task.is_species(label)}
            for label in bundle.labels if label not in bundle.negative_labels]
    _emit(rows, args.json, lambda rs: "\n".join(
        f"{'*' if r['of_interest'] else ' '} {r['label']}  {r['name']}"
        + (f"  ({r['scientific_name']})" if r["scientific_name"] else "") for r in rs))
    unknown = [f"{key}: {name!r}: not a label, common or scientific name of "
               f"{bundle.version}" for key, names in task.unknown.items() for name in names]
    for problem in unknown:
        sys.stderr.write(f"feederd: {problem}\n")
    return EXIT_USAGE if unknown else EXIT_OK


def cmd_suggest_masks(args: argparse.Namespace) -> int:
    """Overlay masks (captions, timestamps) found in clips of this camera, as config lines."""
    from feederd.overlays import read_grey_frames, suggest_masks

    height = _settings(args).motion.height
    found = suggest_masks([read_grey_frames(Path(clip), height) for clip in args.clips])
    if args.json:
        _emit({"ignore_masks": found.masks, "frames": found.frames,
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
    _add_spool(sub, common)
    _add_model(sub, common)
    add("doctor", cmd_doctor, "check camera, model, broker, disk and clock; suggest fixes")
    add("species", cmd_species, "list the model's species (label, common and scientific "
        "name); * marks those visits.species / exclude_species keep")
    masks = add("suggest-masks", cmd_suggest_masks, "find burned-in captions and timestamps "
                "in clips of this camera and print motion.ignore_masks for them")
    masks.add_argument("clips", nargs="+", metavar="CLIP")
    return parser


def _add_spool(sub: Any, common: argparse.ArgumentParser) -> None:
    spool = sub.add_parser("spool", help="inspect and export the negatives spool")
    spool.set_defaults(func=cmd_spool)
    ssub = spool.add_subparsers(dest="spool_cmd", required=True, metavar="ACTION")
    ls = ssub.add_parser("ls", parents=[common], help="list samples")
    ls.add_argument("--since", type=int, default=0, help="only sequences above this")
    ls.add_argument("--limit", type=int, default=100)
    ssub.add_parser("stats", parents=[common], help="counts and sizes")
    show = ssub.add_parser("show", parents=[common], help="one sample")
    show.add_argument("id", type=int)
    export = ssub.add_parser("export", parents=[common],
                             help="write a tar stream (manifest.jsonl + JPEGs) to stdout")
    export.add_argument("--since", type=int, required=True, metavar="SEQ")
    ack = ssub.add_parser("ack", parents=[common], help="mark samples up to SEQ as synced")
    ack.add_argument("seq", type=int, metavar="SEQ")


def _add_model(sub: Any, common: argparse.ArgumentParser) -> None:
    model = sub.add_parser("model", help="list, install or roll back model bundles")
    model.set_defaults(func=cmd_model)
    msub = model.add_subparsers(dest="model_cmd", required=True, metavar="ACTION")
    msub.add_parser("ls", parents=[common], help="installed versions")
    install = msub.add_parser("install", parents=[common], help="validate, compare and "
                              "install a bundle; the daemon reloads it")
    install.add_argument("file", metavar="FILE")
    install.add_argument("--force", action="store_true",
                         help="install even if it does worse on recent labelled samples")
    msub.add_parser("rollback", parents=[common], help="go back to the previous model")
    imp = msub.add_parser("import", parents=[common], help="convert a TFLite image classifier "
                          "into a bundle (needs: pip install 'feederd[import]')")
    imp.add_argument("file", metavar="FILE.tflite")
    imp.add_argument("--labels", metavar="FILE", help="one class name per line, in output "
                     "order (default: the label file inside the .tflite)")
    imp.add_argument("--names", metavar="FILE", help="'Scientific (Common)' lines that give "
                     "common names to scientific labels")
    imp.add_argument("--out", metavar="FILE", help="bundle to write (default: FILE.onnx)")
    imp.add_argument("--version", help="version name (default: the file name)")


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
