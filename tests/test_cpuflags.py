"""Which CPUs get onnxruntime's exact u8u8 fallback for int8 weights (feederd.cpuflags)."""

from __future__ import annotations

from feederd.cpuflags import u8s8_may_saturate

EPYC_ZEN4 = "processor\t: 0\nflags\t\t: fpu sse4_1 avx2 avx512f avx512bw avx512_vnni avx_vnni\n"
HASWELL = "processor\t: 0\nflags\t\t: fpu sse4_1 avx2 fma\n"
ALDER_LAKE = "processor\t: 0\nflags\t\t: fpu avx2 avx_vnni\n"


class TestU8S8MaySaturate:
    def test_x86_with_avx512_vnni_or_avx_vnni_keeps_the_fast_kernels(self) -> None:
        assert not u8s8_may_saturate("x86_64", EPYC_ZEN4)
        assert not u8s8_may_saturate("AMD64", ALDER_LAKE)

    def test_x86_with_avx2_but_no_vnni_falls_back(self) -> None:
        assert u8s8_may_saturate("x86_64", HASWELL)

    def test_x86_whose_flags_cannot_be_read_falls_back(self) -> None:
        assert u8s8_may_saturate("x86_64", "processor\t: 0\n")

    def test_arm64_never_falls_back(self) -> None:
        assert not u8s8_may_saturate("aarch64", "Features\t: fp asimd crc32\n")
