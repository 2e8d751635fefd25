"""feederd: a bird-feeder camera daemon that learns from its own mistakes."""

import os as _os

__version__ = "0.1.0"

# onnxruntime >= 1.2x opens a telemetry store under ~/.cache or $TMPDIR at import; a feeder
# must not phone home nor write files nobody asked for. Set before onnxruntime is imported.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
