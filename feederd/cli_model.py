"""``feederd model`` and ``feederd species``: the installed bundles and the species they know.

``model`` lists, installs, rolls back and imports (TFLite) bundles through
:mod:`feederd.modelstore`; ``species`` lists the serving model's species and which the local
lists keep. Apart from :mod:`feederd.cli` because both are about the model on the device, and
together they are most of the command line's code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from feederd.cli_common import emit, settings_from_args, table
from feederd.config import Settings
from feederd.errors import EXIT_OK, EXIT_USAGE, FeederError

_LS_LABELS = 8  # labels shown per version in the text of `model ls` (--json has them all)


def cmd_model(args: argparse.Namespace) -> int:
    from feederd.modelstore import store_for

    if args.model_cmd == "import":
        return _model_import(args)
    settings = settings_from_args(args)
    store = store_for(settings)  # compares a candidate on the spool's owner-labelled samples
    if args.model_cmd == "ls":
        entries = store.ls()
        emit(entries, args.json, lambda es: "\n\n".join(
            [*([_model_ls_text(es)] if es else []), _serving(settings, not es)]))
    elif args.model_cmd == "install":
        emit(store.install_file(Path(args.file), force=args.force), args.json)
    elif args.model_cmd == "rollback":
        emit(store.rollback(), args.json)
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
        blocks.append(table(shown))
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
    emit({"file": str(out), "version": bundle.version, "labels": len(bundle.labels),
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


def cmd_species(args: argparse.Namespace) -> int:
    """The model's species with their names, and which the local lists keep (exit 2 when a
    listed name matches nothing, naming the key)."""
    from feederd.bundle import read_bundle
    from feederd.daemon import resolve_model_path
    from feederd.task import Task

    settings = settings_from_args(args)
    bundle = read_bundle(resolve_model_path(settings))
    visits = settings.visits
    task = Task.for_bundle(bundle, visits.species, visits.exclude_species)
    rows = [{"label": label, "name": bundle.display_name(label),
             "scientific_name": bundle.scientific_name(label),
             "of_interest": task.is_species(label)}
            for label in bundle.labels if label not in bundle.negative_labels]
    emit(rows, args.json, lambda rs: "\n".join(
        f"{'*' if r['of_interest'] else ' '} {r['label']}  {r['name']}"
        + (f"  ({r['scientific_name']})" if r["scientific_name"] else "") for r in rs))
    unknown = [f"{key}: {name!r}: not a label, common or scientific name of "
               f"{bundle.version}" for key, names in task.unknown.items() for name in names]
    for problem in unknown:
        sys.stderr.write(f"feederd: {problem}\n")
    return EXIT_USAGE if unknown else EXIT_OK


def add_model_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """``model ls | install | rollback | import`` under ``sub`` (``common``: --config, --json)."""
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
