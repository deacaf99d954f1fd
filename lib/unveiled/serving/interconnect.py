"""Links between a GPU and its host and between GPUs, and tensor parallelism on paper.

Two links matter to a serving replica. The *host* link (PCIe) carries what does not fit on the device: a
preempted request's KV blocks swapped to CPU memory and back (vLLM's swap preemption), or offloaded weights
(survey §5.2, Figs 17–18, Chapter 1). The *peer* link (NVLink, or PCIe when there is none) carries tensor
parallelism's traffic: Megatron-LM splits every attention and MLP block over ``p`` GPUs, each holding ``1/p``
of the weights and of the KV heads, and sums the partial outputs with two all-reduces per layer
[Shoeybi et al. 2019]. A ring all-reduce of ``S`` bytes moves ``2 (p - 1) / p · S`` bytes over each GPU's link
[Patarasuk & Yuan 2009]. Bandwidths come from ``data/interconnects.csv`` (vendor datasheets, per direction).
Introduced in Chapter 9.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .._validate import check_choice, check_int, check_positive
from ..analyzer import analyze, model_spec
from ..analyzer.configs import ModelSpec
from ..datafiles import data_file
from ..hardware import Device, get_device

__all__ = ["allreduce_time", "interconnect_table", "link_bandwidth", "shard", "tensor_parallel_decode"]

LINKS = ("host", "peer")


def interconnect_table() -> pd.DataFrame:
    """The sourced link bandwidths: one row per (device, link) with the interconnect's name, its
    bidirectional and per-direction bandwidth (GB/s), the source URL and notes. Introduced in Chapter 9."""
    return pd.read_csv(io.StringIO(data_file("interconnects.csv").read_text()))


def _name(device: str | Device) -> str:
    if isinstance(device, Device):
        return device.name
    if not isinstance(device, str):
        raise TypeError(f"device must be a name or a Device, got {type(device).__name__}")
    return get_device(device).name


def link_bandwidth(device: str | Device, link: str = "host") -> float:
    """Bytes per second one way over ``device``'s ``"host"`` (PCIe) or ``"peer"`` (GPU-to-GPU) link.

    A device without a peer row (no NVLink) talks to its peers over its host link. Raises a ValueError for
    a device the interconnect table does not list. Introduced in Chapter 9.
    """
    check_choice("link", link, LINKS)
    name = _name(device)
    t = interconnect_table()
    rows = t[t.device == name]
    if rows.empty:
        raise ValueError(f"no sourced interconnect data for {name!r}; data/interconnects.csv lists "
                         f"{sorted(t.device.unique())} (or pass the bandwidth explicitly)")
    hit = rows[rows.link == link]
    if hit.empty:
        hit = rows[rows.link == "host"]
    return float(hit.per_direction_gb_s.iloc[0]) * 1e9


def allreduce_time(nbytes, gpus: int, bandwidth: float, latency_s: float = 0.0):
    """Seconds for a ring all-reduce of ``nbytes`` over ``gpus`` GPUs whose links move ``bandwidth`` bytes/s
    each way: ``2 (p - 1) / p · S / bandwidth`` plus ``2 (p - 1)`` hops of ``latency_s`` [Patarasuk & Yuan
    2009]. Zero for one GPU. Arrays broadcast. Introduced in Chapter 9."""
    p = check_int("gpus", gpus)
    check_positive("bandwidth", bandwidth)
    check_positive("latency_s", latency_s, allow_zero=True)
    if p == 1:
        return 0.0 * np.asarray(nbytes, dtype=float)
    return 2 * (p - 1) / p * np.asarray(nbytes, dtype=float) / bandwidth + 2 * (p - 1) * latency_s


def shard(m: str | ModelSpec, gpus: int) -> ModelSpec:
    """The part of a model one of ``gpus`` tensor-parallel GPUs holds (Megatron-LM): ``1/p`` of the query
    heads, of the key/value heads (at least one: smaller groups are replicated), of the MLP width (and each
    expert's) and of the vocabulary (a vocabulary-parallel head); norms and the residual stream stay whole.
    Introduced in Chapter 9."""
    spec = model_spec(m)
    p = check_int("gpus", gpus)
    if spec.num_heads % p:
        raise ValueError(f"{spec.name} has {spec.num_heads} query heads, which {p} GPUs cannot split evenly")
    if spec.is_mla:
        raise ValueError(f"{spec.name} uses multi-head latent attention; tensor-parallel sharding of MLA is not modelled")
    return dataclasses.replace(
        spec, name=f"{spec.name} (1/{p} shard)", num_heads=spec.num_heads // p,
        num_kv_heads=max(1, spec.num_kv_heads // p), intermediate_size=-(-spec.intermediate_size // p),
        expert_intermediate_size=-(-spec.expert_intermediate_size // p),
        shared_expert_intermediate_size=-(-spec.shared_expert_intermediate_size // p),
        vocab_size=-(-spec.vocab_size // p))


def tensor_parallel_decode(m: str | ModelSpec, device: str | Device, gpus: Sequence[int] = (1, 2, 4, 8), *,
                           batch: int = 1, seq_len: int = 1024, links: Sequence[str] = ("peer", "host"),
                           latency_s: float = 0.0, w_bits: int = 16, a_bits: int = 16) -> pd.DataFrame:
    """Decode-step time of ``m`` split over ``p`` GPUs by tensor parallelism, per link kind.

    Each GPU runs its :func:`shard` (the analyzer's roofline time of a decode step at ``batch`` and
    ``seq_len``) and the layers' two all-reduces of ``batch × hidden`` activations each, over the ``"peer"``
    link (NVLink where the device has it) or the ``"host"`` link (PCIe). Columns: ``gpus``, ``link``,
    ``interconnect``, ``compute_ms`` (the shard's step), ``allreduce_ms``, ``step_ms``, ``speedup`` (over one
    GPU) and ``allreduce_bytes`` per step. ``latency_s`` adds a fixed cost per all-reduce hop.
    Introduced in Chapter 9.
    """
    spec = model_spec(m)
    table = interconnect_table()
    name = _name(device)
    rows = []
    base = analyze(spec, device, stage="decode", batch=batch, seq_len=seq_len, w_bits=w_bits, a_bits=a_bits,
                   check_context=False).time_s
    per_layer_bytes = batch * spec.hidden_size * a_bits / 8
    for p in gpus:
        p = check_int("gpus", p)
        compute = base if p == 1 else analyze(shard(spec, p), device, stage="decode", batch=batch, seq_len=seq_len,
                                              w_bits=w_bits, a_bits=a_bits, check_context=False).time_s
        for link in links:
            bw = link_bandwidth(name, link)
            hit = table[(table.device == name) & (table.link == link)]
            kind = hit.interconnect.iloc[0] if len(hit) else table[(table.device == name)
                                                                    & (table.link == "host")].interconnect.iloc[0]
            comm = 2 * spec.num_layers * allreduce_time(per_layer_bytes, p, bw, latency_s)
            rows.append({"gpus": p, "link": link, "interconnect": kind, "compute_ms": compute * 1e3,
                         "allreduce_ms": float(comm) * 1e3, "step_ms": (compute + float(comm)) * 1e3,
                         "speedup": base / (compute + float(comm)),
                         "allreduce_bytes": 2 * spec.num_layers * per_layer_bytes * (p > 1)})
    return pd.DataFrame(rows)
