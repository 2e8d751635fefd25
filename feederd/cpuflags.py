"""Which CPUs sum onnxruntime's u8 x s8 products in saturating 16-bit arithmetic.

On x86, onnxruntime's u8s8 kernels without VNNI (SSE4.1, AVX2, AVX-512 without VNNI) add
pairs of uint8 x int8 products with ``PMADDUBSW``, which saturates at 32767 (255 * 127 * 2 =
64770), so a bundle with int8 weights can give other answers there. With VNNI (``avx512_vnni``
or ``avx_vnni``) the sums are int32, exact. ARM64 kernels never saturate for weights in
-127..127 (see :meth:`feederd.tflite_tensors.TensorGraph._signed`). On a CPU that may saturate the
classifier sets onnxruntime's ``session.x64quantprecision``, which converts int8 weights back
to uint8 (u8u8 kernels, exact, as fast as a uint8 bundle).
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

logger = logging.getLogger(__name__)

X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})
CPUINFO = Path("/proc/cpuinfo")


def u8s8_may_saturate(machine: str | None = None, cpuinfo: str | None = None) -> bool:
    """True on x86 without VNNI, and on x86 whose flags cannot be read (the safe side)."""
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine not in X86:
        return False
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return True
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return not VNNI_FLAGS & set(value.split())
    return True
