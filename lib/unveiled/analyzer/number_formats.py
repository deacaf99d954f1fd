"""Number formats in the analyzer: the bytes a format stores per weight and the roof its matrix products use.

A format saves memory traffic wherever it is stored; it saves operations only where the device's matrix units
multiply in it. :func:`format_roof` reads which is the case from the sourced ``data/device_features.csv``
(:func:`unveiled.hardware.feature_compute_dtype`): a *native* format runs at its own peak (FP8, FP6 at the FP8
rate, FP4, MX and NVFP4 on their element's peak), a *storage* format is converted to the device's 16-bit type
inside the kernel, so FP16 (or BF16) bounds it. :data:`NUMBER_FORMATS` gives the storage cost of each named
format with its block scales (the same numbers as :func:`unveiled.quant.formats.bits_per_element`, which a test
checks, kept here so that the analyzer needs no PyTorch). Used by ``uv.analyze(..., number_format=...)``.
Introduced in Chapter 10.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._validate import suggest
from ..hardware import Device, feature_compute_dtype, get_device

__all__ = ["NUMBER_FORMATS", "FormatRoof", "check_number_format", "format_roof"]

#: name -> (element bits, stored bits per element with block scales). MX: one 8-bit scale per 32 values;
#: NVFP4: one 8-bit scale per 16 (its FP32 tensor scale is negligible); per-channel scales are not counted.
NUMBER_FORMATS: dict[str, tuple[int, float]] = {
    "fp8_e4m3": (8, 8.0), "fp8_e5m2": (8, 8.0), "fp6_e3m2": (6, 6.0), "fp6_e2m3": (6, 6.0), "fp4_e2m1": (4, 4.0),
    "mxfp8": (8, 8.25), "mxfp6": (6, 6.25), "mxfp4": (4, 4.25), "nvfp4": (4, 4.5), "int8": (8, 8.0),
    "int4": (4, 4.0),
}


def check_number_format(name: object) -> str:
    """Check a format name (one of :data:`NUMBER_FORMATS`); suggests close names for typos."""
    if not isinstance(name, str):
        raise TypeError(f"number_format must be a name such as 'nvfp4', got {type(name).__name__}")
    if name not in NUMBER_FORMATS:
        close = suggest(name, NUMBER_FORMATS)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown number format {name!r}.{hint} Accepted: {list(NUMBER_FORMATS)}")
    return name


@dataclass(frozen=True)
class FormatRoof:
    """Where the matrix products of a format run on a device: ``compute_dtype`` (the peak that bounds them) and
    ``support`` (``"native"``, ``"storage"``, ``"none"`` or None where no source says). Introduced in Chapter 10.
    """

    number_format: str
    device: Device
    compute_dtype: str
    support: str | None

    @property
    def element_bits(self) -> int:
        return NUMBER_FORMATS[self.number_format][0]

    @property
    def stored_bits(self) -> float:
        return NUMBER_FORMATS[self.number_format][1]

    @property
    def native(self) -> bool:
        return self.support == "native"

    @property
    def note(self) -> str:
        """One sentence for the reader: native, storage-only, or unknown (and what the analyzer assumed)."""
        name, dev, dt = self.number_format.upper(), self.device.display_name, self.compute_dtype.upper()
        if self.native:
            return f"{name} is native on {dev}: its matrix products run at the {dt} peak."
        why = {"storage": "is only a storage format on", "none": "is not supported by the matrix units of"}.get(
            self.support, "has no sourced support entry for")
        return (f"{name} {why} {dev} (data/device_features.csv): weights are stored in it "
                f"({self.stored_bits:g} bits each), matrix products run at the {dt} peak.")


def format_roof(device: str | Device, number_format: str) -> FormatRoof:
    """The compute roof of ``number_format``'s matrix products on ``device`` (see the module docstring).

    Introduced in Chapter 10."""
    dev = get_device(device) if not isinstance(device, Device) else device
    name = check_number_format(number_format)
    dtype, support = feature_compute_dtype(dev, name)
    return FormatRoof(name, dev, dtype, support)
