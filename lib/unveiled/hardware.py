"""A sourced registry of accelerators: memory bandwidth, capacity and dense peak throughput per data type.

The roofline model (Williams et al. 2009; survey §2.2) needs two numbers per device and data type: how many
bytes per second its memory delivers and how many operations per second its compute units sustain. This
module reads them from ``data/hardware.csv``, where every row cites its source. Peaks are **dense**: vendor
figures "with sparsity" (2:4 structured sparsity) are twice as high and are never used here.

Two presets exist. ``"datasheet"`` (the default) holds the vendors' published figures. ``"llm-viewer"`` holds
the numbers hard-coded in LLM-Viewer (``hardwares/hardware_params.py``), the tool the survey used, so that the
survey's tables and figures can be reproduced exactly (see Chapter 2).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from ._validate import check_positive, unknown_name
from .datafiles import data_file

__all__ = [
    "DTYPES",
    "Device",
    "define_device",
    "device_names",
    "hardware",
    "hardware_table",
]

#: Data types with a peak column in the hardware table, and the bytes one element occupies.
DTYPES: dict[str, float] = {
    "fp32": 4.0,
    "tf32": 4.0,
    "fp16": 2.0,
    "bf16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "fp4": 0.5,
    "int4": 0.5,
}
PRESETS = ("datasheet", "llm-viewer")

_FLOAT_COLS = {
    "bandwidth_gb_s": 1e9,
    "memory_gb": 1e9,
    "onchip_mb": 1e6,
    "smem_per_sm_kb": 1e3,
}


@dataclass(frozen=True)
class Device:
    """One accelerator (or CPU) as the roofline sees it.

    Attributes use SI base units: ``bandwidth`` in bytes/s, ``memory_bytes`` and ``onchip_bytes`` in bytes,
    ``peaks`` maps a data type (see :data:`DTYPES`) to dense operations/s. Introduced in Chapter 1.
    """

    name: str
    bandwidth: float
    peaks: Mapping[str, float]
    memory_bytes: float | None = None
    display_name: str = ""
    vendor: str = ""
    kind: str = "gpu"
    onchip_bytes: float | None = None
    sm_count: int | None = None
    smem_per_sm_bytes: float | None = None
    preset: str = "datasheet"
    source_url: str = ""
    notes: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"device name must be a non-empty str, got {self.name!r}")
        check_positive("bandwidth (bytes/s)", self.bandwidth)
        if not isinstance(self.peaks, Mapping) or not self.peaks:
            raise ValueError(
                f"device {self.name!r} needs at least one peak, e.g. peaks={{'fp16': 1e14}} (ops/s); "
                f"accepted data types: {list(DTYPES)}"
            )
        for dtype, value in self.peaks.items():
            if dtype not in DTYPES:
                raise ValueError(f"unknown data type {dtype!r} in peaks of {self.name!r}; accepted: {list(DTYPES)}")
            check_positive(f"peak {dtype} (ops/s) of {self.name!r}", value)
        if self.memory_bytes is not None:
            check_positive("memory_bytes", self.memory_bytes)
        if not self.display_name:
            object.__setattr__(self, "display_name", self.name)
        object.__setattr__(self, "peaks", dict(self.peaks))

    @property
    def dtypes(self) -> list[str]:
        """Data types this device has a (dense) peak for."""
        return [d for d in DTYPES if d in self.peaks]

    def peak(self, dtype: str = "fp16") -> float:
        """Dense peak throughput for ``dtype`` in operations/s (FLOP/s for floats, OP/s for integers)."""
        if dtype not in DTYPES:
            raise ValueError(f"unknown data type {dtype!r}; accepted: {list(DTYPES)}")
        if dtype not in self.peaks:
            raise ValueError(
                f"{self.display_name} has no {dtype} peak in the table (it lacks that unit or no source gives it); "
                f"available: {self.dtypes}"
            )
        return float(self.peaks[dtype])

    def ridge_point(self, dtype: str = "fp16") -> float:
        """Arithmetic intensity (ops/byte) where the memory roof meets the compute roof."""
        return self.peak(dtype) / self.bandwidth

    def with_(self, **changes) -> Device:
        """A modified copy, e.g. ``dev.with_(bandwidth=3 * dev.bandwidth)`` for a what-if study."""
        from dataclasses import replace

        return replace(self, **changes)

    def __repr__(self) -> str:  # short and useful in notebooks
        mem = f", {self.memory_bytes / 1e9:.0f} GB" if self.memory_bytes else ""
        peaks = ", ".join(f"{d} {self.peaks[d] / 1e12:g} T" for d in self.dtypes)
        return f"Device({self.name!r}: {self.bandwidth / 1e9:g} GB/s{mem}; {peaks}; preset={self.preset})"


def _parse_rows() -> list[Device]:
    text = data_file("hardware.csv").read_text(encoding="utf-8")
    devices = []
    for row in csv.DictReader(io.StringIO(text)):
        peaks = {}
        for dtype in DTYPES:
            cell = (row.get(f"peak_{dtype}_t") or "").strip()
            if cell:
                peaks[dtype] = float(cell) * 1e12
        vals = {k: (float(row[k]) * scale if (row.get(k) or "").strip() else None) for k, scale in _FLOAT_COLS.items()}
        devices.append(
            Device(
                name=row["name"].strip(),
                display_name=row["display_name"].strip(),
                vendor=row["vendor"].strip(),
                kind=row["kind"].strip(),
                preset=row["preset"].strip(),
                bandwidth=vals["bandwidth_gb_s"],
                memory_bytes=vals["memory_gb"],
                onchip_bytes=vals["onchip_mb"],
                smem_per_sm_bytes=vals["smem_per_sm_kb"],
                sm_count=int(row["sm_count"]) if (row.get("sm_count") or "").strip() else None,
                peaks=peaks,
                source_url=row["source_url"].strip(),
                notes=row["notes"].strip(),
                aliases=tuple(a.strip() for a in (row.get("aliases") or "").split(";") if a.strip()),
            )
        )
    return devices


_REGISTRY: dict[tuple[str, str], Device] = {}
_ALIASES: dict[str, str] = {}


def _load() -> None:
    if _REGISTRY:
        return
    for dev in _parse_rows():
        _register(dev)


def _register(dev: Device, overwrite: bool = False) -> None:
    key = (dev.name.lower(), dev.preset)
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"a device named {dev.name!r} (preset {dev.preset!r}) already exists; pass overwrite=True")
    _REGISTRY[key] = dev
    for alias in dev.aliases:
        _ALIASES[alias.lower()] = dev.name.lower()


def _normalise(name: str) -> str:
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    return _ALIASES.get(key, key)


def device_names(preset: str = "datasheet") -> list[str]:
    """Names of the registered devices for a preset (introduced in Chapter 1)."""
    _load()
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    return sorted(n for (n, p) in _REGISTRY if p == preset)


def hardware(name: str | Device, preset: str = "datasheet") -> Device:
    """Look up a device by name, e.g. ``hardware("a6000")`` or ``hardware("h100", preset="llm-viewer")``.

    Names are case-insensitive and accept the aliases listed in ``data/hardware.csv``. A misspelled name
    raises a :class:`ValueError` listing the close matches. Passing a :class:`Device` returns it unchanged.
    Introduced in Chapter 1.
    """
    if isinstance(name, Device):
        return name
    if not isinstance(name, str):
        raise TypeError(f"device name must be a str such as 'a6000' or a Device, got {type(name).__name__}")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    _load()
    key = _normalise(name)
    dev = _REGISTRY.get((key, preset))
    if dev is None:
        err = unknown_name("device", name, device_names(preset))
        other = [p for p in PRESETS if p != preset and (key, p) in _REGISTRY]
        if other:
            err = ValueError(f"{err} ({name!r} exists in preset {other[0]!r}: pass preset={other[0]!r})")
        raise err
    return dev


def define_device(
    name: str,
    *,
    bandwidth_gb_s: float,
    peaks_tflops: Mapping[str, float],
    memory_gb: float | None = None,
    display_name: str = "",
    register: bool = True,
    overwrite: bool = False,
    **extra,
) -> Device:
    """Define your own device in one call, e.g. a what-if accelerator or the machine you measured.

    ``peaks_tflops`` maps data types to dense TFLOP/s (TOP/s for integers), e.g. ``{"fp16": 200}``. With
    ``register=True`` the device becomes available to :func:`hardware` under ``name``. Introduced in Chapter 1.
    """
    if not isinstance(peaks_tflops, Mapping):
        raise TypeError(f"peaks_tflops must be a dict such as {{'fp16': 200}}, got {type(peaks_tflops).__name__}")
    check_positive("bandwidth_gb_s", bandwidth_gb_s)
    dev = Device(
        name=name,
        display_name=display_name or name,
        bandwidth=float(bandwidth_gb_s) * 1e9,
        peaks={k: check_positive(f"peaks_tflops[{k!r}]", v) * 1e12 for k, v in peaks_tflops.items()},
        memory_bytes=None if memory_gb is None else check_positive("memory_gb", memory_gb) * 1e9,
        preset="datasheet",
        notes=extra.pop("notes", "user-defined"),
        **extra,
    )
    if register:
        _load()
        _register(dev, overwrite=overwrite)
    return dev


def hardware_table(preset: str | None = "datasheet") -> pd.DataFrame:
    """The hardware registry as a DataFrame with unit-bearing columns (introduced in Chapter 1)."""
    _load()
    rows = []
    for dev in _REGISTRY.values():
        if preset is not None and dev.preset != preset:
            continue
        row = {
            "name": dev.name,
            "device": dev.display_name,
            "vendor": dev.vendor,
            "kind": dev.kind,
            "preset": dev.preset,
            "bandwidth_GB_s": dev.bandwidth / 1e9,
            "memory_GB": None if dev.memory_bytes is None else dev.memory_bytes / 1e9,
        }
        for dtype in DTYPES:
            row[f"{dtype}_TFLOP_s"] = dev.peaks[dtype] / 1e12 if dtype in dev.peaks else None
        row["ridge_fp16_or_bf16"] = dev.peak("fp16" if "fp16" in dev.peaks else dev.dtypes[0]) / dev.bandwidth
        row["source"] = dev.source_url
        row["notes"] = dev.notes
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["preset", "vendor", "name"]).reset_index(drop=True)
