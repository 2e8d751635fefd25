"""The ``feeder-sync`` command line (laptop side).

Exit codes: 0 success, 2 bad usage or input (a config key, a label, a refused model; the
message says which), 1 anything else (an unreachable device, a broken stream). ``--json``
prints one JSON document for scripts; progress bars appear only on a terminal.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from feederd.errors import (
    EXIT_OK,
    ConfigError,
    cli_failure,
)
from feederd.sync.config import SyncConfig, config_target, device_config, load_config, pick_device
from feederd.sync.workspace import Workspace

logger = logging.getLogger(__name__)



class Context:
    """What every command needs: the config, the device, its workspace, output options."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.config: SyncConfig
        self.config, self.config_path = load_config(Path(args.config) if args.config else None)
        self.device = pick_device(self.config, args.device)
        self.workspace = Workspace(self.config.workspace, self.device)
        self.json: bool = args.json
        self.progress = sys.stderr.isatty() and not args.json and not args.quiet

    def transport(self) -> Any:
        from feederd.sync.transport import open_transport

        return open_transport(self.device, device_config(self.config, self.device))

    def alert_confidence(self) -> float:
        device = self.config.devices.get(self.device)
        return device.alert_confidence if device else 0.5

    def emit(self, data: Any, text: str | Callable[[Any], str] | None = None) -> None:
        if self.json:
            sys.stdout.write(json.dumps(data, sort_keys=True, default=str) + "\n")
        elif callable(text):
            sys.stdout.write(text(data) + "\n")
        else:
            sys.stdout.write((text if text is not None else _plain(data)) + "\n")


def _plain(data: Any, indent: str = "") -> str:
    if isinstance(data, dict):
        lines = []
        for key, value in data.items():
            if isinstance(value, dict | list) and value:
                lines.append(f"{indent}{key}:")
                lines.append(_plain(value, indent + "  "))
            else:
                lines.append(f"{indent}{key}: {value}")
        return "\n".join(lines)
    if isinstance(data, list):
        return "\n".join(_plain(item, indent) if isinstance(item, dict) else f"{indent}- {item}"
                         for item in data)
    return f"{indent}{data}"


# --- commands ---------------------------------------------------------------------------------

def cmd_init(ctx: Context) -> int:
    from feederd.sync.evaluate import evaluate
    from feederd.sync.init import init_workspace

    args = ctx.args
    if args.from_bundle:
        from feederd.sync.frombundle import init_from_bundle

        with ctx.workspace.lock():
            result = init_from_bundle(ctx.workspace, ctx.config.training, Path(args.from_bundle))
        evaluate(ctx.workspace, alert_confidence=ctx.alert_confidence(),
                 tolerance=ctx.config.training.tolerance, progress=ctx.progress)
        ctx.emit(result.as_dict(), lambda d: (
            f"baseline {d['version']} for device '{ctx.device}': the shipped bundle "
            f"{d['file']}\nnext: 'feeder-sync push', then 'feeder-sync loop' once the owner "
            "has rejected a few alerts"))
        return EXIT_OK
    default_backbone(args)
    if (done := _init_device_only(ctx)) is not None:
        return done
    with ctx.workspace.lock():
        result = init_workspace(ctx.workspace, ctx.config.training, backbone=Path(args.backbone),
                                embedding_output=args.embedding_output,
                                preprocess=args.preprocess, data=Path(args.data),
                                negative_labels=args.negative_labels or [],
                                holdout=args.holdout, progress=ctx.progress)
    report = evaluate(ctx.workspace, alert_confidence=ctx.alert_confidence(),
                      tolerance=ctx.config.training.tolerance, threads=ctx.config.training.threads,
                      batch_size=ctx.config.training.batch_size, progress=ctx.progress,
                      view=ctx.config.training.view)
    data = {**result.as_dict(), "report": str(report.path / "report.md")}
    ctx.emit(data, lambda d: (
        f"baseline {d['version']} for device '{ctx.device}': {d['file']}\n"
        f"trained on {d['trained_on']}\n"
        f"held-out mean species recall {d['metrics'].get('mean_species_recall')}\n"
        f"report: {d['report']}\nnext: " + (
            "'feeder-sync push' installs it on the device" if ctx.device in ctx.config.devices
            else "say how to reach the device, `feeder-sync init --device "
            f"{ctx.device} --host USER@HOST` (or --local STATE_DIR), then 'feeder-sync push'")))
    return EXIT_OK


BASELINE_FLAGS = ("backbone", "embedding_output", "preprocess", "data")
BACKBONE_FLAGS = BASELINE_FLAGS[:3]


def default_backbone(args: argparse.Namespace) -> None:
    """``--data`` alone: the owner's head goes on the shipped bird model's embedding.

    On the shared data it tells squirrels from crows where SqueezeNet cannot (loop bench: 0.5%
    vs 2.5% false alerts after 25 replies), and it is already on every device.
    """
    if args.data is None or any(getattr(args, flag) is not None for flag in BACKBONE_FLAGS):
        return
    from feederd.assets import default_model_path
    args.backbone = str(default_model_path())
    args.embedding_output = "embedding"
    args.preprocess = "pixels"


def _init_device_only(ctx: Context) -> int | None:
    """``init --host/--local`` without the baseline flags: only the device entry was wanted.
    Returns the exit code then, ``None`` when a baseline is to be built."""
    args = ctx.args
    missing = [f"--{flag.replace('_', '-')}" for flag in BASELINE_FLAGS
               if getattr(args, flag) is None]
    if not missing:
        return None
    if len(missing) < len(BASELINE_FLAGS) or not (args.host or args.local):
        raise ConfigError(f"init needs {', '.join(missing)} to build the first model "
                          "(--data DIR alone uses the shipped bird model as the backbone; or "
                          "--from-bundle FILE.onnx; or only --host/--local to add the device)")
    device = device_config(ctx.config, ctx.device)
    ctx.emit({"device": ctx.device, "config": str(ctx.config_path),
              **device.model_dump(include={"transport", "host", "path"})}, lambda d: (
        f"device '{d['device']}' ({d['transport']} {d.get('host') or d.get('path')}) is in "
        f"{d['config']}\nnext: 'feeder-sync init --data PHOTOS/' builds its first "
        "model, or 'feeder-sync pull' if it has one"))
    return EXIT_OK


def add_device_entry(args: argparse.Namespace) -> None:
    """``init --host/--local``: write ``[devices.NAME]`` before the config is loaded."""
    from feederd.sync.devices import add_device, device_entry

    entry = device_entry(host=args.host, local=args.local,
                         feederd_config=args.feederd_config)
    path = config_target(Path(args.config) if args.config else None)
    added = add_device(path, args.device or "feeder", entry)
    if not args.device:
        args.device = "feeder"
    logger.info("%s [devices.%s] in %s", "added" if added else "found the same",
                args.device, path)


def cmd_pull(ctx: Context) -> int:
    from feederd.sync.pull import progress_bar, pull

    with progress_bar(ctx.progress) as bar:
        result = pull(ctx.workspace.require(), ctx.transport(), bar)
    ctx.emit(result.as_dict(), lambda d: (
        f"pulled {d['received']} samples from '{ctx.device}' (up to sequence {d['last_seq']}"
        f"{', acknowledged' if d['acked'] else ''}); labels: {d['labels'] or '-'}"
        + (f"; the device quarantined {len(d['damaged'])} damaged sample(s)"
           if d['damaged'] else "")
        + (f"; {d['refused']} unsafe value(s) refused" if d['refused'] else "")))
    return EXIT_OK


def cmd_review(ctx: Context) -> int:
    from feederd.sync import review

    args = ctx.args
    ws = ctx.workspace.require()
    labels = dict(_pair(item) for item in args.label or [])
    if args.web:
        from feederd.sync.web import serve

        return serve(ws, port=args.port, open_browser=not args.no_browser)
    if labels or args.exclude or args.accept_pseudo:
        result = review.apply(ws, labels=labels, exclude=args.exclude or [],
                              accept_pseudo=args.accept_pseudo, new_labels=args.new_label or [])
        ctx.emit(result.as_dict())
        return EXIT_OK
    if args.list or not (args.interactive or sys.stdin.isatty()) or ctx.json:
        todo = review.pending(ws)
        ctx.emit([{k: s.get(k) for k in ("id", "seq", "visit_id", "reasons", "predicted",
                                         "margin", "label", "label_source", "file")}
                  for s in todo],
                 lambda _: "\n".join(review.describe(s, ws) for s in todo)
                 or "nothing to review")
        return EXIT_OK
    result = review.interactive(ws, input, sys.stdout)
    ctx.emit(result.as_dict())
    return EXIT_OK


def _pair(text: str) -> tuple[str, str]:
    sample_id, sep, label = text.partition("=")
    if not sep or not sample_id or not label:
        raise ConfigError(f"--label {text!r}: expected ID=LABEL, e.g. --label 42=other")
    return sample_id.strip(), label.strip()


def cmd_train(ctx: Context) -> int:
    from feederd.sync.train import train

    with ctx.workspace.require().lock():
        result = train(ctx.workspace, ctx.config.training,
                       allow_new_class=True if ctx.args.allow_new_class else None,
                       negative_labels=ctx.args.negative_label or [], progress=ctx.progress)
    ctx.emit(result.as_dict(), lambda d: (
        f"trained {d['version']} ({d['file']})\non {d['trained_on']} "
        f"({d['mined_used']} mined, {d['dropped_negatives']} negatives left out by the cap)\n"
        f"held-out mean species recall {d['metrics'].get('mean_species_recall')}\n"
        f"next: 'feeder-sync evaluate'"))
    return EXIT_OK


def cmd_evaluate(ctx: Context) -> int:
    from feederd.sync.evaluate import evaluate, markdown

    training = ctx.config.training
    report = evaluate(ctx.workspace.require(), alert_confidence=ctx.alert_confidence(),
                      tolerance=training.tolerance, noise_images=training.noise_images,
                      candidate=ctx.args.candidate, reference=ctx.args.against,
                      negatives_dirs=[Path(d) for d in ctx.args.negatives or []],
                      threads=training.threads, batch_size=training.batch_size,
                      progress=ctx.progress, view=training.view,
                      weak_after_s=training.weak_positive_after_s)
    ctx.emit(report.as_dict(), lambda _: markdown(report) + f"\nreport: {report.path}")
    return EXIT_OK


def cmd_push(ctx: Context) -> int:
    from feederd.sync.loop import push

    result = push(ctx.workspace.require(), ctx.transport(), ctx.args.version, ctx.args.force)
    ctx.emit(result, lambda d: f"installed {d['pushed']} on '{ctx.device}' "
             f"(previous: {d['previous'] or '-'})")
    return EXIT_OK


def cmd_rollback(ctx: Context) -> int:
    from feederd.sync.loop import rollback

    result = rollback(ctx.workspace, ctx.transport())
    ctx.emit(result, lambda d: f"'{ctx.device}' now runs {d.get('current')} "
             f"(rolled back from {d.get('previous')})")
    return EXIT_OK


def cmd_status(ctx: Context) -> int:
    from feederd.sync.loop import status

    devices = [ctx.device] if ctx.args.device else sorted(
        set(ctx.config.devices) | {p.name for p in _workspaces(ctx.config.workspace)})
    result = []
    for name in devices:
        workspace = Workspace(ctx.config.workspace, name)
        if workspace.exists():
            result.append(status(workspace, ctx.config.devices.get(name)))
        else:
            result.append({"device": name, "workspace": "none yet (run 'feeder-sync init')"})
    ctx.emit(result)
    return EXIT_OK


def _workspaces(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if (p / "state.json").exists()] if root.is_dir() else []


def cmd_loop(ctx: Context) -> int:
    from feederd.sync.loop import run_loop
    from feederd.sync.pull import progress_bar

    with progress_bar(ctx.progress) as bar:
        summary = run_loop(ctx.workspace.require(), ctx.transport(), ctx.config.training,
                           device_config(ctx.config, ctx.device),
                           negatives_dirs=[Path(d) for d in ctx.args.negatives or []],
                           progress=ctx.progress, pull_progress=bar)
    ctx.emit(summary.as_dict(), lambda _: summary.text())
    return EXIT_OK


# --- parser -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", help="feeder-sync config (default: "
                        "$FEEDER_SYNC_CONFIG or ~/.config/feeder-sync/config.toml)")
    common.add_argument("--device", "-d", help="device name (default: the only one)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    common.add_argument("--verbose", "-v", action="store_true", help="log what happens")
    parser = argparse.ArgumentParser(
        prog="feeder-sync", description="Pull a feeder's mined samples, retrain, evaluate and "
        "push the model back.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[Context], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    init = add("init", cmd_init, "build a first model from a backbone ONNX and an image "
               "folder (<label>/*.jpg), or start from a shipped bundle (--from-bundle)")
    init.add_argument("--from-bundle", metavar="FILE.onnx", help="start from this bundle "
                      "(e.g. models/aiy_birds_v1.onnx): no photo folder needed")
    init.add_argument("--backbone", metavar="FILE.onnx", help="any ImageNet feature extractor "
                      "(default with --data: the shipped bird model, models/aiy_birds_v1.onnx, "
                      "--embedding-output embedding --preprocess pixels)")
    init.add_argument("--embedding-output", metavar="NAME",
                      help="tensor to pool into the embedding, e.g. fire9/concat_1")
    init.add_argument("--preprocess", choices=["caffe", "pixels", "rgb"],  # dataset.PREPROCESS
                      help="caffe: BGR 0-255 minus means; rgb: torchvision mean/std; pixels: "
                      "uint8 RGB as is (models/aiy_birds_v1.onnx, --embedding-output embedding)")
    init.add_argument("--data", metavar="DIR", help="one folder per label")
    reach = init.add_mutually_exclusive_group()
    reach.add_argument("--host", metavar="USER@HOST", help="write [devices.NAME] to the "
                       "config: reach the feeder over ssh (default name: feeder)")
    reach.add_argument("--local", metavar="STATE_DIR", help="write [devices.NAME]: a feederd "
                       "on this machine with this state folder")
    init.add_argument("--feederd-config", metavar="FILE",
                      help="with --host/--local: the feederd config on the device")
    init.add_argument("--negative-labels", nargs="+", metavar="LABEL",
                      help="labels that mean 'nothing of interest' (e.g. other)")
    init.add_argument("--holdout", type=float, metavar="SHARE",
                      help="share of each class kept for evaluation (default 0.2)")
    add("pull", cmd_pull, "copy new spool samples from the device, then acknowledge them")
    review = add("review", cmd_review, "label the pulled samples that need a decision")
    review.add_argument("--list", action="store_true", help="only list what needs review")
    review.add_argument("--accept-pseudo", action="store_true",
                        help="accept every pending pseudo-label")
    review.add_argument("--label", action="append", metavar="ID=LABEL",
                        help="give sample ID this label (repeatable)")
    review.add_argument("--exclude", action="append", metavar="ID",
                        help="never train on sample ID (repeatable)")
    review.add_argument("--interactive", action="store_true",
                        help="ask about each sample even when stdin is not a terminal")
    review.add_argument("--new-label", action="append", metavar="LABEL",
                        help="allow LABEL, which no model knows yet, in --label (repeatable)")
    review.add_argument("--web", action="store_true", help="review in the browser: a page "
                        "on 127.0.0.1 with a secret link, until Ctrl+C")
    review.add_argument("--port", type=int, default=0, help="--web: port (default: a free one)")
    review.add_argument("--no-browser", action="store_true",
                        help="--web: only print the link, do not open a browser")
    train = add("train", cmd_train, "retrain the head on the base data and labelled samples")
    train.add_argument("--allow-new-class", action="store_true",
                       help="labels the base dataset lacks become new classes")
    train.add_argument("--negative-label", action="append", metavar="LABEL",
                       help="also treat LABEL as nothing of interest (e.g. squirrel)")
    evaluate = add("evaluate", cmd_evaluate, "compare the candidate with the deployed model; "
                   "write the report and decide the gate")
    evaluate.add_argument("--candidate", metavar="VERSION", help="default: the latest")
    evaluate.add_argument("--against", metavar="VERSION", help="default: the deployed model")
    evaluate.add_argument("--negatives", action="append", metavar="DIR",
                          help="a folder of images that must not alert (repeatable)")
    push = add("push", cmd_push, "install a model on the device (default: the candidate)")
    push.add_argument("--version", metavar="VERSION")
    push.add_argument("--force", action="store_true",
                      help="push even if the gate failed or the device sees a regression")
    add("rollback", cmd_rollback, "make the device run its previous model again")
    add("status", cmd_status, "what was pulled, labelled, trained and deployed, per device")
    loop = add("loop", cmd_loop, "pull, train, evaluate, and push if the gate passes")
    loop.add_argument("--negatives", action="append", metavar="DIR",
                      help="extra folder of images that must not alert (repeatable)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
    try:
        if getattr(args, "host", None) or getattr(args, "local", None):
            add_device_entry(args)
        return int(args.func(Context(args)))
    except (Exception, KeyboardInterrupt) as exc:  # one mapping for both CLIs: feederd.errors
        return cli_failure("feeder-sync", args.command, exc)


if __name__ == "__main__":
    sys.exit(main())
