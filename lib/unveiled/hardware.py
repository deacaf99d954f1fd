"""A sourced registry of accelerators: memory bandwidth, capacity and dense peak throughput per data type.

The roofline model [Williams et al. 2009] (survey §2.2) needs two numbers per device and data type: how many
bytes per second its memory delivers and how many operations per second its compute units sustain. This
module reads them from ``data/hardware.csv``, where every row cites its source. Peaks are **dense**: vendor
figures "with sparsity" (2:4 structured sparsity) are twice as high and are never used here. A device that
lacks a unit for a data type (no INT4 on Hopper, no FP8 on Ampere) has no peak for it, and asking for one is
an error rather than a silent fallback.

Two presets exist. ``"datasheet"`` (the default) holds the vendors' published figures. ``"llm-viewer"`` holds
exactly the numbers hard-coded in LLM-Viewer (``hardwares/hardware_params.py``), the tool the survey used, so
that the survey's tables and figures can be reproduced (Chapters 1 and 2).

Column conventions of ``data/hardware.csv``:

* ``bandwidth_gb_s``: off-chip memory bandwidth in decimal GB/s (1e9 B/s).
* ``memory_gb`` with ``memory_unit``: the vendor's capacity figure and how to read it. Vendors write "80 GB"
  for memory that is really 80 GiB (an "80 GB" A100 reports 81,920 MiB), so the unit column says ``GiB`` and
  :attr:`Device.memory_bytes` is exact.
* ``peak_<dtype>_t``: dense peak in TFLOP/s (TOP/s for integer types).
* ``onchip_mb``: in the datasheet preset, the last-level on-chip cache (L2 on GPUs, L3 on CPUs, Infinity
  Cache on the MI300X); in the llm-viewer preset, LLM-Viewer's ``onchip_buffer`` (the register file total).
* ``sm_count`` and ``smem_per_sm_kb``: streaming multiprocessors and their maximum shared memory (compute
  units and LDS on AMD), which bound FlashAttention's tile sizes (Chapter 2).
"""

from __future__ import annotations

import csv
import functools
import io
import numbers
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

import numpy as np
import pandas as pd

from ._validate import check_positive, suggest
from .datafiles import data_file

__all__ = [
    "DTYPES",
    "FEATURES",
    "FEATURE_DTYPES",
    "KINDS",
    "PRESETS",
    "SUPPORT_LEVELS",
    "Device",
    "canonical_dtype",
    "define_device",
    "device_features",
    "device_names",
    "feature_compute_dtype",
    "get_device",
    "hardware_table",
    "supports",
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
#: Kinds of device in the registry ("pim": processing in memory; "spatial": SRAM-heavy dataflow designs).
KINDS = ("gpu", "cpu", "tpu", "soc", "npu", "pim", "spatial", "other")

# Other spellings of the data types (NumPy/PyTorch names), accepted everywhere a dtype is.
_DTYPE_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "single": "fp32",
    "tensorfloat32": "tf32",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "float8": "fp8",
    "float8_e4m3fn": "fp8",
    "float8_e5m2": "fp8",
    "e4m3": "fp8",
    "e5m2": "fp8",
    "fp4_e2m1": "fp4",
    "nvfp4": "fp4",
    "mxfp4": "fp4",
}

_FLOAT_COLS = {
    "bandwidth_gb_s": 1e9,
    "onchip_mb": 1e6,
    "smem_per_sm_kb": 1e3,
}
_MEMORY_UNITS = {"GB": 1e9, "GiB": 2.0**30}


def canonical_dtype(dtype: object) -> str:
    """The book's name for a data type: ``"bfloat16"``, ``torch.bfloat16`` and ``"BF16"`` all give ``"bf16"``.

    Raises :class:`TypeError` for non-strings and :class:`ValueError` (listing the accepted names) for unknown
    ones. Introduced in Chapter 1.
    """
    if not isinstance(dtype, str):
        text = str(dtype)
        if text.startswith("torch."):  # a torch.dtype, without importing torch
            dtype = text[len("torch."):]
        else:
            raise TypeError(f"dtype must be a str such as 'fp16', got {type(dtype).__name__} {dtype!r}")
    key = dtype.strip().lower()
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPES:
        close = suggest(key, list(DTYPES) + list(_DTYPE_ALIASES))
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown data type {dtype!r}.{hint} Accepted: {list(DTYPES)}")
    return key


@dataclass(frozen=True)
class Device:
    """One accelerator (or CPU) as the roofline sees it.

    Attributes use SI base units: ``bandwidth`` in bytes/s, ``memory_bytes`` and ``onchip_bytes`` in bytes,
    ``peaks`` maps a data type (see :data:`DTYPES`) to dense operations/s. Build one with
    :func:`define_device`, look one up with :func:`get_device`, derive a what-if variant with :meth:`with_`.
    Introduced in Chapter 1.
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
        if not isinstance(self.name, str) or not self.name.strip():
            raise TypeError(f"device name must be a non-empty str, got {self.name!r}")
        check_positive("bandwidth (bytes/s)", self.bandwidth)
        object.__setattr__(self, "bandwidth", float(self.bandwidth))
        if not isinstance(self.peaks, Mapping):
            raise TypeError(
                f"peaks must be a dict mapping data types to ops/s, e.g. {{'fp16': 1e14}}, got "
                f"{type(self.peaks).__name__}"
            )
        if not self.peaks:
            raise ValueError(
                f"device {self.name!r} needs at least one peak, e.g. peaks={{'fp16': 1e14}} (ops/s); "
                f"accepted data types: {list(DTYPES)}"
            )
        peaks = {}
        for dtype, value in self.peaks.items():
            peaks[canonical_dtype(dtype)] = check_positive(f"peak {dtype} (ops/s) of {self.name!r}", value)
        object.__setattr__(self, "peaks", peaks)
        for attr in ("memory_bytes", "onchip_bytes", "smem_per_sm_bytes"):
            value = getattr(self, attr)
            if value is not None:
                object.__setattr__(self, attr, check_positive(attr, value))
        if self.sm_count is not None and (
            isinstance(self.sm_count, bool) or not isinstance(self.sm_count, numbers.Integral) or self.sm_count < 1
        ):
            raise ValueError(f"sm_count must be a positive int or None, got {self.sm_count!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        if not self.display_name:
            object.__setattr__(self, "display_name", self.name)
        object.__setattr__(self, "aliases", tuple(self.aliases))

    @property
    def dtypes(self) -> list[str]:
        """Data types this device has a (dense) peak for, from wide to narrow."""
        return [d for d in DTYPES if d in self.peaks]

    def has(self, dtype: str) -> bool:
        """Whether the table gives this device a peak for ``dtype``."""
        return canonical_dtype(dtype) in self.peaks

    def peak(self, dtype: str = "fp16") -> float:
        """Dense peak throughput for ``dtype`` in operations/s (FLOP/s for floats, OP/s for integers)."""
        key = canonical_dtype(dtype)
        if key not in self.peaks:
            raise ValueError(
                f"{self.display_name} has no {key} peak in the table (it lacks that unit, or no source gives "
                f"it); available: {self.dtypes}. Compute in a wider type, e.g. dtype={self.dtypes[0]!r}"
            )
        return float(self.peaks[key])

    def ridge_point(self, dtype: str = "fp16") -> float:
        """Arithmetic intensity (ops/byte) where the memory roof meets the compute roof: peak / bandwidth."""
        return self.peak(dtype) / self.bandwidth

    def attainable(self, intensity, dtype: str = "fp16"):
        """Attainable ops/s at ``intensity`` ops/byte: ``min(peak, bandwidth × intensity)`` (the roofline).

        ``intensity`` is a number or an array (> 0); the result has its shape. The roofline module's
        :func:`unveiled.attainable_performance` is the same, for a device given by name. Chapter 1.
        """
        peak = self.peak(dtype)
        i = np.asarray(check_positive("intensity (ops/byte)", intensity, allow_array=True), dtype=float)
        out = np.minimum(peak, self.bandwidth * i)
        return float(out) if out.ndim == 0 else out

    def time(self, flops, bytes_, dtype: str = "fp16"):
        """Roofline time in seconds of an operation: ``max(flops / peak, bytes / bandwidth)``.

        Loads, compute and stores overlap perfectly, as the roofline assumes. Either argument may be zero (a
        pure copy has no operations), not both; arrays broadcast. The roofline module's
        :func:`unveiled.roofline_time` is the same, for a device given by name. Chapter 1.
        """
        peak = self.peak(dtype)
        f = np.asarray(check_positive("flops", flops, allow_array=True, allow_zero=True), dtype=float)
        q = np.asarray(check_positive("bytes", bytes_, allow_array=True, allow_zero=True), dtype=float)
        if np.any((f == 0) & (q == 0)):
            raise ValueError("an operation needs flops > 0 or bytes > 0 (both are zero)")
        t = np.maximum(f / peak, q / self.bandwidth)
        return float(t) if t.ndim == 0 else t

    def with_(self, **changes) -> Device:
        """A modified copy, e.g. ``dev.with_(bandwidth=3 * dev.bandwidth)`` for a what-if study.

        Unknown field names raise a :class:`TypeError` that lists the fields a device has.
        """
        names = [f.name for f in fields(self)]
        bad = [k for k in changes if k not in names]
        if bad:
            raise TypeError(f"Device has no field(s) {bad}; fields: {names}")
        return replace(self, **changes)

    def __repr__(self) -> str:  # short and useful in notebooks
        mem = f", {self.memory_bytes / 2**30:.0f} GiB" if self.memory_bytes else ""
        peaks = ", ".join(f"{d} {self.peaks[d] / 1e12:g} T" for d in self.dtypes)
        return f"Device({self.name!r}: {self.bandwidth / 1e9:g} GB/s{mem}; {peaks}; preset={self.preset})"


def _cell(row: Mapping[str, str], key: str) -> str:
    return (row.get(key) or "").strip()


def _parse_rows() -> list[Device]:
    text = data_file("hardware.csv").read_text(encoding="utf-8")
    devices = []
    for line, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        where = f"data/hardware.csv line {line} ({_cell(row, 'name')!r})"
        peaks = {d: float(_cell(row, f"peak_{d}_t")) * 1e12 for d in DTYPES if _cell(row, f"peak_{d}_t")}
        vals = {k: (float(_cell(row, k)) * scale if _cell(row, k) else None) for k, scale in _FLOAT_COLS.items()}
        memory = None
        if _cell(row, "memory_gb"):
            unit = _cell(row, "memory_unit") or "GB"
            if unit not in _MEMORY_UNITS:
                raise ValueError(f"{where}: memory_unit must be one of {list(_MEMORY_UNITS)}, got {unit!r}")
            memory = float(_cell(row, "memory_gb")) * _MEMORY_UNITS[unit]
        if not _cell(row, "source_url"):
            raise ValueError(f"{where}: every row of the hardware table needs a source_url")
        devices.append(
            Device(
                name=_cell(row, "name"),
                display_name=_cell(row, "display_name"),
                vendor=_cell(row, "vendor"),
                kind=_cell(row, "kind"),
                preset=_cell(row, "preset"),
                bandwidth=vals["bandwidth_gb_s"],
                memory_bytes=memory,
                onchip_bytes=vals["onchip_mb"],
                smem_per_sm_bytes=vals["smem_per_sm_kb"],
                sm_count=int(_cell(row, "sm_count")) if _cell(row, "sm_count") else None,
                peaks=peaks,
                source_url=_cell(row, "source_url"),
                notes=_cell(row, "notes"),
                aliases=tuple(a.strip() for a in _cell(row, "aliases").split(";") if a.strip()),
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


def _normalise(name: str) -> str:
    return "-".join(name.strip().lower().replace("_", " ").replace("-", " ").split())


def _register(dev: Device, overwrite: bool = False) -> None:
    key = (_normalise(dev.name), dev.preset)
    if key in _REGISTRY and not overwrite:
        raise ValueError(
            f"a device named {dev.name!r} (preset {dev.preset!r}) already exists; pass overwrite=True to replace it"
        )
    if key[0] in _ALIASES and _ALIASES[key[0]] != key[0]:
        raise ValueError(f"{dev.name!r} is already an alias of {_ALIASES[key[0]]!r}; choose another name")
    names = [dev.aliases, (dev.display_name,)] if dev.preset == "datasheet" else [dev.aliases]
    for alias in (a for group in names for a in group):
        a = _normalise(alias)
        if a == key[0]:
            continue
        target = _ALIASES.get(a)
        if target is not None and target != key[0]:
            raise ValueError(f"alias {alias!r} of {dev.name!r} already points to {target!r}")
        if any(n == a for n, _ in _REGISTRY) and a != key[0]:
            raise ValueError(f"alias {alias!r} of {dev.name!r} is the name of another device")
        _ALIASES[a] = key[0]
    _REGISTRY[key] = dev


def _resolve(name: str) -> str:
    key = _normalise(name)
    return _ALIASES.get(key, key)


def device_names(preset: str = "datasheet") -> list[str]:
    """Names of the registered devices for a preset, e.g. ``["a100-40gb", "a100-80gb", ...]`` (Chapter 1)."""
    _load()
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    return sorted(n for (n, p) in _REGISTRY if p == preset)


def get_device(name: str | Device, preset: str = "datasheet") -> Device:
    """Look up a device by name, e.g. ``get_device("a6000")`` or ``get_device("h100", preset="llm-viewer")``.

    Names are case-insensitive, ignore spaces, dashes and underscores, and accept the aliases listed in
    ``data/hardware.csv`` and the display names (``"NVIDIA H100 SXM"``). A misspelled name raises a
    :class:`ValueError` listing the close matches. Passing a :class:`Device` returns it unchanged.
    Introduced in Chapter 1.
    """
    if isinstance(name, Device):
        return name
    if not isinstance(name, str):
        raise TypeError(f"device name must be a str such as 'a6000' or a Device, got {type(name).__name__}")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    _load()
    key = _resolve(name)
    dev = _REGISTRY.get((key, preset))
    if dev is not None:
        return dev
    other = [p for p in PRESETS if p != preset and (key, p) in _REGISTRY]
    if other:
        raise ValueError(
            f"{name!r} has no entry in preset {preset!r} but exists in preset {other[0]!r}: pass "
            f"preset={other[0]!r}. Devices in {preset!r}: {', '.join(device_names(preset))}"
        )
    names = device_names(preset)
    pool = {n: n for n in names}
    pool.update({a: t for a, t in _ALIASES.items() if t in pool})
    close = list(dict.fromkeys(pool[c] for c in suggest(_normalise(name), list(pool), n=8)))[:4]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown device {name!r}.{hint} Known devices ({preset}): {', '.join(names)}")


def define_device(
    name: str,
    *,
    bandwidth_gb_s: float,
    peaks_tflops: Mapping[str, float],
    memory_gb: float | None = None,
    display_name: str = "",
    kind: str = "gpu",
    register: bool = True,
    overwrite: bool = False,
    **extra,
) -> Device:
    """Define your own device in one call, e.g. a what-if accelerator or the machine you measured.

    ``peaks_tflops`` maps data types to dense TFLOP/s (TOP/s for integers), e.g. ``{"fp16": 200}``;
    ``memory_gb`` is decimal GB. With ``register=True`` the device becomes available to :func:`get_device`
    under ``name`` (preset ``"datasheet"``). Other keyword arguments set :class:`Device` fields (``vendor``,
    ``notes``, ``onchip_bytes``, ``sm_count``...). Introduced in Chapter 1.
    """
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"name must be a non-empty str such as 'my-gpu', got {name!r}")
    if not isinstance(peaks_tflops, Mapping):
        raise TypeError(f"peaks_tflops must be a dict such as {{'fp16': 200}}, got {type(peaks_tflops).__name__}")
    allowed = {f.name for f in fields(Device)} - {"name", "bandwidth", "peaks", "memory_bytes", "display_name",
                                                  "kind", "preset"}
    bad = sorted(set(extra) - allowed)
    if bad:
        raise TypeError(f"define_device() got unexpected keyword(s) {bad}; accepted extras: {sorted(allowed)}")
    bandwidth = check_positive("bandwidth_gb_s", bandwidth_gb_s) * 1e9
    dev = Device(
        name=name.strip(),
        display_name=display_name or name.strip(),
        bandwidth=bandwidth,
        peaks={k: check_positive(f"peaks_tflops[{k!r}]", v) * 1e12 for k, v in peaks_tflops.items()},
        memory_bytes=None if memory_gb is None else check_positive("memory_gb", memory_gb) * 1e9,
        kind=kind,
        preset="datasheet",
        notes=extra.pop("notes", "user-defined"),
        **extra,
    )
    if register:
        _load()
        _register(dev, overwrite=overwrite)
    return dev


def hardware_table(preset: str | None = "datasheet") -> pd.DataFrame:
    """The hardware registry as a DataFrame with unit-bearing columns (introduced in Chapter 1).

    Peaks are in ``<dtype>_TFLOP_s`` columns (TOP/s for integer types); ``ridge_fp16_or_bf16`` is the ridge
    point in ops/byte for FP16 (BF16 where the device has no FP16 peak, NaN where it has neither).
    ``preset=None`` returns both presets.
    """
    _load()
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS} or None, got {preset!r}")
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
            "memory_GB": np.nan if dev.memory_bytes is None else dev.memory_bytes / 1e9,
            "memory_GiB": np.nan if dev.memory_bytes is None else dev.memory_bytes / 2**30,
        }
        for dtype in DTYPES:
            row[f"{dtype}_TFLOP_s"] = dev.peaks[dtype] / 1e12 if dtype in dev.peaks else np.nan
        half = "fp16" if "fp16" in dev.peaks else "bf16" if "bf16" in dev.peaks else None
        row["ridge_fp16_or_bf16"] = dev.ridge_point(half) if half else np.nan
        row["onchip_MB"] = np.nan if dev.onchip_bytes is None else dev.onchip_bytes / 1e6
        row["sm_count"] = dev.sm_count
        row["smem_per_sm_KB"] = np.nan if dev.smem_per_sm_bytes is None else dev.smem_per_sm_bytes / 1e3
        row["source"] = dev.source_url
        row["notes"] = dev.notes
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["preset", "vendor", "name"]).reset_index(drop=True)
    table["sm_count"] = table["sm_count"].astype("Int64")
    return table


#: What a device can do with a number format or a sparsity pattern, beyond its dense peaks: ``data/device_features.csv``
#: has one sourced row per (device, feature). Features name formats and patterns (the formats of
#: :mod:`unveiled.quant` and the N:M patterns of pruning); support is ``"native"`` (matrix units execute it at
#: a published rate), ``"storage"`` (the device can hold it in memory, but converts to a wider type to compute)
#: or ``"none"``. A (device, feature) pair without a row is unknown, not unsupported.
FEATURES = ("fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1", "mxfp8", "mxfp6", "mxfp4", "nvfp4",
            "int8", "int4", "sparse_2_4")
SUPPORT_LEVELS = ("native", "storage", "none")


def device_features(preset: str = "datasheet") -> pd.DataFrame:
    """The sourced feature table: one row per (device, feature) with ``support``, ``source_url`` and ``notes``.

    Device names are the registry's canonical names; every row needs a source. Introduced in Chapter 1.
    """
    _load()
    return _parse_features(preset, data_file("device_features.csv").read_text(encoding="utf-8")).copy()


@functools.lru_cache(maxsize=8)
def _parse_features(preset: str, text: str) -> pd.DataFrame:
    """Parse and check the feature table (cached on its text: the analyzer asks for it for every format)."""
    df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    canonical = []
    for i, row in enumerate(df.itertuples(index=False), start=2):
        where = f"data/device_features.csv line {i}"
        if row.feature not in FEATURES:
            raise ValueError(f"{where}: unknown feature {row.feature!r}; accepted: {list(FEATURES)}")
        if row.support not in SUPPORT_LEVELS:
            raise ValueError(f"{where}: support must be one of {list(SUPPORT_LEVELS)}, got {row.support!r}")
        if not row.source_url:
            raise ValueError(f"{where}: every row needs a source_url")
        canonical.append(get_device(row.device, preset).name)  # raises for an unknown device
    df["device"] = canonical
    return df.reset_index(drop=True)


def supports(device: str | Device, feature: str) -> str | None:
    """How ``device`` supports ``feature``: ``"native"``, ``"storage"``, ``"none"``, or None where no source says.

    ``supports("h100-sxm", "sparse_2_4")`` asks whether the H100's tensor cores run 2:4 sparse matmuls.
    Introduced in Chapter 1.
    """
    if feature not in FEATURES:
        close = suggest(str(feature), FEATURES)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown feature {feature!r}.{hint} Accepted: {list(FEATURES)}")
    dev = get_device(device)
    df = device_features(dev.preset)
    hit = df[(df["device"] == dev.name) & (df["feature"] == feature)]
    return None if hit.empty else str(hit["support"].iloc[0])


#: The peak (a data type of the hardware table) that bounds a matmul in each number format where a device runs
#: the format natively. FP6 runs at the FP8 rate (the B200 datasheet gives one "FP8/FP6" rate); MX and NVFP4
#: run at the rate of their element type.
FEATURE_DTYPES: dict[str, str] = {"fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "fp6_e3m2": "fp8", "fp6_e2m3": "fp8",
                                  "mxfp8": "fp8", "mxfp6": "fp8", "fp4_e2m1": "fp4", "mxfp4": "fp4", "nvfp4": "fp4",
                                  "int8": "int8", "int4": "int4"}


def feature_compute_dtype(device: str | Device, feature: str) -> tuple[str, str | None]:
    """The data type whose peak bounds a matmul in number format ``feature`` on ``device``, and the support.

    Where the device runs the format natively (``supports`` says ``"native"``), the format's own peak
    (:data:`FEATURE_DTYPES`); otherwise (``"storage"``, ``"none"`` or no source) the values are converted to the
    device's 16-bit type before its matrix units, so FP16 (BF16 where it has no FP16 peak) bounds it: a storage
    format saves bytes, not operations. ``("fp4", "native")`` for NVFP4 on a B200, ``("fp16", "storage")`` on an
    H100. Introduced in Chapter 10.
    """
    if feature not in FEATURE_DTYPES:
        close = suggest(str(feature), FEATURE_DTYPES)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"no compute data type for feature {feature!r}.{hint} Number formats: {list(FEATURE_DTYPES)}")
    dev = get_device(device) if not isinstance(device, Device) else device
    support = supports(dev, feature)
    if support == "native":
        dtype = FEATURE_DTYPES[feature]
        if dtype not in dev.peaks:
            raise ValueError(f"data/device_features.csv says {dev.display_name} runs {feature} natively, but the "
                             f"hardware table has no {dtype} peak for it")
        return dtype, support
    for half in ("fp16", "bf16"):
        if half in dev.peaks:
            return half, support
    return dev.dtypes[0], support


# ---- deprecated spellings ------------------------------------------------------------------------------
#: Deprecated alias of :func:`get_device`. As a function named like its module, ``unveiled.hardware`` used to
#: shadow this module; it is kept so that older notebooks run, and new code writes :func:`get_device`.
hardware = get_device


class _RegistryModule(types.ModuleType):
    """This module, callable: ``uv.hardware("a6000")`` is a deprecated alias of ``uv.get_device("a6000")``."""

    def __call__(self, name: str | Device, preset: str = "datasheet") -> Device:
        return get_device(name, preset)


sys.modules[__name__].__class__ = _RegistryModule
