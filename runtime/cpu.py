"""What the CPU that will run the model offers, read from /proc/cpuinfo.

Passes choose settings from it: quantization (8-bit weights or 7-bit ``reduce_range``) and
structured pruning (kept widths rounded to the convolution kernels' channel block).

Why it matters for int8
    On x86-64, ONNX Runtime multiplies uint8 activations by int8 weights. Without VNNI
    (``avx512_vnni``, ``avx_vnni``) or AMX, the AVX2/AVX-512 instruction it uses (``vpmaddubsw``)
    adds two 8-bit products into a saturating 16-bit sum, which can overflow for large weights;
    ONNX Runtime's guidance is to quantize weights to 7 bits (``reduce_range``) there. With VNNI
    (and on ARM, whose dot-product instructions accumulate in 32 bits) full 8-bit weights are
    safe and more accurate.

Why it matters for channel widths
    ONNX Runtime runs float convolutions on x86-64 in a blocked layout (NCHWc) whose block is
    16 channels with AVX-512 and 8 with AVX2; a width between two blocks is padded up, so a
    pruned Conv of 40 channels costs what 48 cost. Measured here (AVX-512): the seed CNN pruned
    to ratio 0.5 ran 1.0x the original's speed with odd widths and 2x with widths rounded to 16.

Limits
    Flags are read from ``/proc/cpuinfo`` (Linux). Elsewhere the flags are unknown: on x86-64 the
    pass then assumes no VNNI (reduce_range on, the safe choice) and says so.
"""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path

__all__ = ["CpuFeatures", "detect_cpu", "VNNI_FLAGS"]

#: cpuinfo flags that give 32-bit accumulation of 8-bit products on x86-64
VNNI_FLAGS: tuple[str, ...] = ("avx512_vnni", "avx_vnni", "amx_int8")
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")


@dataclasses.dataclass(frozen=True)
class CpuFeatures:
    """The CPU architecture and the int8-relevant flags found, with where they came from."""

    arch: str
    flags: frozenset[str]
    source: str  # "/proc/cpuinfo" or "unknown"
    model_name: str = ""

    @property
    def x86(self) -> bool:
        return self.arch.lower() in _X86

    @property
    def vnni(self) -> bool | None:
        """True/False on x86-64 when the flags are known; None when unknown or not x86."""
        if not self.x86 or self.source == "unknown":
            return None
        return any(flag in self.flags for flag in VNNI_FLAGS)

    def int8_flags(self) -> list[str]:
        interesting = ("avx2", "avx512f", "avx512bw", *VNNI_FLAGS, "asimddp", "i8mm")
        return [flag for flag in interesting if flag in self.flags]

    def describe(self) -> str:
        name = f" ({self.model_name})" if self.model_name else ""
        if self.source == "unknown":
            return f"{self.arch}{name}, CPU flags unknown (no /proc/cpuinfo)"
        flags = ", ".join(self.int8_flags()) or "no AVX2/VNNI/dot-product flags"
        return f"{self.arch}{name} with {flags} (from {self.source})"

    def channel_multiple(self) -> tuple[int, str]:
        """(multiple, why): the channel count that fills ONNX Runtime's NCHWc block here.

        16 with AVX-512, 8 with AVX2 (or AVX), and 8 where the flags are unknown or the CPU is
        not x86-64 (a multiple of 8 suits vectorized GEMM kernels everywhere).
        """
        if self.x86 and "avx512f" in self.flags:
            return 16, f"{self.describe()}: NCHWc block of 16 channels (AVX-512)"
        if self.x86 and ("avx2" in self.flags or "avx" in self.flags):
            return 8, f"{self.describe()}: NCHWc block of 8 channels (AVX2)"
        return 8, f"{self.describe()}: multiples of 8 suit vectorized kernels"

    def needs_reduce_range(self) -> tuple[bool, str]:
        """(reduce_range, why) for int8 weights on this CPU (see the module docstring)."""
        if not self.x86:
            return False, f"{self.describe()}: not x86-64, 8-bit products accumulate in 32 bits"
        if self.vnni is None:
            return True, f"{self.describe()}: VNNI cannot be confirmed, 7-bit weights avoid saturation"
        if self.vnni:
            found = [flag for flag in VNNI_FLAGS if flag in self.flags]
            return False, f"CPU has {', '.join(found)}: full 8-bit weights are safe"
        return True, f"{self.describe()}: no VNNI, 7-bit weights avoid 16-bit saturation (vpmaddubsw)"


def detect_cpu(cpuinfo: str | Path = "/proc/cpuinfo") -> CpuFeatures:
    """Read the CPU's flags (the first processor's) from ``cpuinfo``."""
    arch = platform.machine() or "unknown"
    path = Path(cpuinfo)
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return CpuFeatures(arch=arch, flags=frozenset(), source="unknown")
    flags: set[str] = set()
    model_name = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags.update(value.split())
        elif key == "model name" and not model_name:
            model_name = value.strip()
    if not flags:
        return CpuFeatures(arch=arch, flags=frozenset(), source="unknown", model_name=model_name)
    return CpuFeatures(arch=arch, flags=frozenset(flags), source=str(path), model_name=model_name)
