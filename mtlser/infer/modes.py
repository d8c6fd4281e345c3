"""Which backend and precision can run here: the pairs mtlser-infer offers, and native bf16 detection.

Read by :class:`mtlser.infer.SERPredictor` before it loads anything and by :mod:`mtlser.infer.backends`.
"""

from __future__ import annotations

from pathlib import Path

from mtlser.utils import MtlserError

BACKENDS = ("torch", "onnx")
PRECISIONS = {"torch": ("fp32", "bf16", "fp16"), "onnx": ("fp32", "int8")}
#: A non-exact mode that changes more than this share of fp32's labels on its check is never a default.
MAX_LABEL_CHANGE = 0.01
#: CPU flags that mean bf16 arithmetic in hardware (AVX512-BF16 dot products, AMX tiles).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16(cpuinfo: str = "/proc/cpuinfo") -> tuple[bool, str]:
    """(whether this CPU computes bf16 natively, how that was decided)."""
    import torch

    try:
        flags = set()
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
    except OSError:
        return False, f"{cpuinfo} unreadable: bf16 support unknown (torch CPU capability " \
                      f"{torch.backends.cpu.get_cpu_capability()})"
    found = [f for f in BF16_FLAGS if f in flags]
    if found:
        return True, f"{cpuinfo} flags {' '.join(found)}"
    return False, f"{cpuinfo} has none of the flags {' '.join(BF16_FLAGS)}"


def check_mode(backend: str, precision: str, device: str = "cpu") -> None:
    """Refuse, in one line, a backend/precision pair that cannot run here."""
    if backend not in BACKENDS:
        raise MtlserError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS[backend]:
        hint = {"int8": " (int8 is onnxruntime's: --backend onnx)",
                "bf16": " (bf16 is torch's: --backend torch)"}.get(precision, "")
        raise MtlserError(f"--backend {backend} --precision {precision}: the {backend} backend runs "
                          f"{', '.join(PRECISIONS[backend])}{hint}")
    if backend == "onnx" and device != "cpu":
        raise MtlserError(f"--backend onnx runs on the CPU (onnxruntime's CPU provider), not {device}")
    if backend == "torch" and precision == "bf16" and device == "cpu":
        ok, how = native_bf16()
        if not ok:
            raise MtlserError(f"--precision bf16: this CPU has no native bf16 ({how}); emulated bf16 is slower "
                              "than fp32. Use fp32, or --backend onnx --precision int8")
