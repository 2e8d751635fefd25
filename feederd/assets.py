"""Where the bundled models and the demo clip are, in a source checkout and an installed wheel.

The files live in the repository's top-level ``models/`` folder: the AIY Birds V1 bundle that
``feederd run`` uses when no model is configured or installed (made by
``tools/convert_tflite.py``), and the cartoon demo model and clip of ``feederd demo`` with
stills of the clip (made by ``tools/make_demo_assets.py``). A source checkout or editable
install (``pip install -e .``) finds them next to the package; a wheel carries them as the
package data ``feederd/assets_data/`` when the build maps that folder there (see
``models/README.md``).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from feederd.errors import ModelError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "aiy_birds_v1.onnx"
DEMO_MODEL = "demo.onnx"
DEMO_CLIP = "demo-clip.mp4"
CHECK_FRAMES = "demo-clip-frame-*.jpg"
_PACKAGE_DATA = "feederd.assets_data"


def asset_dirs() -> list[Path]:
    """Candidate folders, most specific first: installed package data, then the checkout."""
    folders: list[Path] = []
    spec = importlib.util.find_spec(_PACKAGE_DATA)
    if spec is not None and spec.submodule_search_locations:
        folders.extend(Path(p) for p in spec.submodule_search_locations)
    folders.append(Path(__file__).resolve().parent.parent / "models")
    return folders


def asset_path(name: str) -> Path:
    """The bundled file ``name``; raises ModelError saying how to get it when it is absent."""
    for folder in asset_dirs():
        candidate = folder / name
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(folder) for folder in asset_dirs())
    raise ModelError(f"bundled file {name} not found (searched {searched}); reinstall "
                     "feederd, or in a source checkout run tools/make_demo_assets.py (demo) or "
                     "tools/convert_tflite.py (the bird model)")


def default_model_path() -> Path:
    """AIY Birds V1 (964 species + background), the model of ``feederd run`` out of the box."""
    return asset_path(DEFAULT_MODEL)


def demo_model_path() -> Path:
    """The demo model bundle (cartoon birds only; see models/README.md)."""
    return asset_path(DEMO_MODEL)


def is_demo_model(path: Path) -> bool:
    """``path`` is the bundled cartoon model (it cannot recognise real birds)."""
    try:
        return path.resolve() == demo_model_path().resolve()
    except (ModelError, OSError):
        return False


def demo_clip_path() -> Path:
    """The synthetic feeder clip the demo model was made for."""
    return asset_path(DEMO_CLIP)


def check_frame_paths() -> list[Path]:
    """Stills of the demo clip (``demo-clip-frame-<index>.jpg``, tools/make_demo_assets.py)
    on which every model is checked before it serves (feederd.modelchain).

    Stills, not the clip: decoding video pages in FFmpeg's decoders, ~15 MB of a Pi's memory
    that its camera never needs (``tools/bench/rss_bench.py --source`` a photo folder).
    """
    for folder in asset_dirs():
        if found := sorted(folder.glob(CHECK_FRAMES)):
            return found
    return []
