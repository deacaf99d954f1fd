"""Weight forms of pruning and factorization on the roofline: the bytes and operations of a compressed linear.

The survey describes pruning (§3.2) and factorization (§3.4) without a roofline analysis; this module gives
the analyzer one. A linear layer ``[out, in]`` applied to ``N`` tokens costs ``2·N·in·out`` operations and
reads its weight once. A :class:`WeightForm` says how the weight is stored and executed:

* ``dense``: ``in·out`` values;
* ``unstructured`` at sparsity ``s``: the ``(1 − s)·in·out`` kept values plus where they are, either a
  **bitmask** (one bit per position) or **CSR** indices (one column index per kept value and a row pointer per
  row, ``index_bits`` each). Without a sparse kernel the arithmetic is unchanged: the weights are expanded to
  dense tiles on chip and multiplied in full (the "load sparse, compute dense" of Flash-LLM [Xia et al. 2023]);
* ``n:m``: ``n/m`` of the values plus ``⌈log₂ m⌉`` bits of position per kept value (2 bits for 2:4, as on
  NVIDIA's sparse tensor cores [Mishra et al. 2021]); only a device with native 2:4 support
  (``supports(device, "sparse_2_4") == "native"``) skips the zero products, which doubles its compute roof;
* ``lowrank`` with ``keep``: two thin matmuls ``[in → r]`` and ``[r → out]`` with ``r·(in + out) = keep·in·out``:
  both bytes and operations shrink by ``keep``, and the ``N·r`` intermediate activations are extra traffic;
* ``structured`` pruning needs no form: it changes the model's dimensions (a smaller config).

Every function is NumPy arithmetic on scalars or arrays. Introduced in Chapter 5.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .._validate import check_choice, check_int, check_number
from ..hardware import Device, supports

__all__ = [
    "BLOCK_PROJECTIONS",
    "FORMS",
    "STORAGES",
    "WeightForm",
    "apply_weight_form",
    "check_weight_form",
    "linear_form_cost",
    "pruned_spec",
    "weight_form_bytes",
]

#: The operators a weight form applies to: the dense block projections (embeddings, head and experts stay).
BLOCK_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "fc1", "fc2")

FORMS = ("dense", "unstructured", "n:m", "lowrank")
STORAGES = ("bitmask", "csr")


@dataclass(frozen=True)
class WeightForm:
    """How the block projections' weights are stored and run (see the module docstring).

    ``WeightForm("unstructured", sparsity=0.5, storage="csr", index_bits=32)``, ``WeightForm("n:m", n=2, m=4)``,
    ``WeightForm("lowrank", keep=0.6)``. :meth:`parse` also reads ``"2:4"`` and ``"dense"``. Introduced in
    Chapter 5.
    """

    kind: str = "dense"
    sparsity: float = 0.0
    storage: str = "bitmask"
    index_bits: int = 32
    n: int = 2
    m: int = 4
    keep: float = 1.0

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, FORMS)
        check_choice("storage", self.storage, STORAGES)
        check_choice("index_bits", self.index_bits, (8, 16, 32, 64))
        s = check_number("sparsity", self.sparsity)
        if not 0.0 <= s < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {s}")
        n, m = check_int("n", self.n), check_int("m", self.m)
        if n > m:
            raise ValueError(f"an N:M pattern keeps N of every M weights, so N <= M; got {n}:{m}")
        k = check_number("keep", self.keep)
        if not 0.0 < k <= 1.0:
            raise ValueError(f"keep (the fraction of a factorized layer's parameters kept) must be in (0, 1], got {k}")

    @classmethod
    def parse(cls, value: WeightForm | str | None) -> WeightForm:
        if value is None:
            return cls()
        if isinstance(value, WeightForm):
            return value
        if isinstance(value, str):
            if value == "dense":
                return cls()
            if ":" in value:
                a, _, b = value.partition(":")
                if a.strip().isdigit() and b.strip().isdigit():
                    return cls("n:m", n=int(a), m=int(b))
        raise ValueError(f"a weight form is a WeightForm, 'dense' or an 'N:M' pattern such as '2:4', got {value!r}")

    @property
    def label(self) -> str:
        if self.kind == "unstructured":
            idx = f" int{self.index_bits}" if self.storage == "csr" else ""
            return f"{100 * self.sparsity:g}% unstructured ({self.storage}{idx})"
        if self.kind == "n:m":
            return f"{self.n}:{self.m}"
        if self.kind == "lowrank":
            return f"low-rank, {100 * self.keep:g}% of parameters"
        return "dense"

    def hardware_sparse(self) -> bool:
        """Whether sparse tensor cores could execute this form (2:4 only; the device must also support it)."""
        return self.kind == "n:m" and (self.n, self.m) == (2, 4)


def weight_form_bytes(out_features, in_features, w_bits, form: WeightForm | str | None = None):
    """Bytes a ``[out, in]`` weight occupies (and a matmul reads) in ``form``, at ``w_bits`` per stored value.

    Introduced in Chapter 5.
    """
    f = WeightForm.parse(form)
    o, i = np.asarray(out_features, dtype=float), np.asarray(in_features, dtype=float)
    wb = np.asarray(w_bits, dtype=float) / 8.0
    size = o * i
    if f.kind == "dense":
        out = size * wb
    elif f.kind == "unstructured":
        nnz = (1.0 - f.sparsity) * size
        meta = size / 8.0 if f.storage == "bitmask" else (nnz + o + 1) * f.index_bits / 8.0
        out = nnz * wb + meta
    elif f.kind == "n:m":
        kept = size * f.n / f.m
        out = kept * wb + kept * math.ceil(math.log2(f.m)) / 8.0
    else:
        out = _rank(o, i, f.keep) * (o + i) * wb
    return float(out) if np.ndim(out) == 0 else out


def check_weight_form(weight_form, conventions: str = "exact") -> WeightForm:
    """The weight form to apply; LLM-Viewer's accounting (``conventions="paper"``) has no notion of one.

    Introduced in Chapter 5."""
    form = WeightForm.parse(weight_form)
    if form.kind != "dense" and conventions != "exact":
        raise ValueError(f"weight_form={form.label!r} needs conventions='exact' (LLM-Viewer models dense weights only)")
    return form


def _rank(o, i, keep):
    return np.maximum(1.0, np.floor(keep * o * i / (o + i)))


def linear_form_cost(tokens, out_features, in_features, w_bits=16, a_bits=16, form: WeightForm | str | None = None,
                     native_sparse: bool = False) -> dict[str, object]:
    """Operations and bytes of a linear layer on ``tokens`` rows with its weight in ``form``.

    Returns ``{"flops", "weight_bytes", "act_bytes", "bytes", "peak_scale"}``. Activations are read and written
    once (``a_bits`` each); a low-rank pair also writes and re-reads its ``tokens·r`` intermediate. ``flops``
    count the products of the matrix as stored: ``2·N·in·out`` for dense, unstructured and N:M forms (zeros
    included) and ``2·N·r·(in + out)`` for low rank. ``peak_scale`` is ``m/n`` (2 for 2:4) when
    ``native_sparse`` and the form is 2:4: the device's sparse tensor cores skip the zeros, which doubles its
    compute roof; otherwise 1. Introduced in Chapter 5.
    """
    f = WeightForm.parse(form)
    N = np.asarray(tokens, dtype=float)
    o, i = np.asarray(out_features, dtype=float), np.asarray(in_features, dtype=float)
    ab = np.asarray(a_bits, dtype=float) / 8.0
    wbytes = weight_form_bytes(o, i, w_bits, f)
    act = N * (i + o) * ab
    if f.kind == "lowrank":
        r = _rank(o, i, f.keep)
        flops = 2.0 * N * r * (i + o)
        act = act + 2.0 * N * r * ab
    else:
        flops = 2.0 * N * i * o
    scale = f.m / f.n if native_sparse and f.hardware_sparse() else 1.0
    return {"flops": flops, "weight_bytes": wbytes, "act_bytes": act, "bytes": wbytes + act, "peak_scale": scale}


def pruned_spec(spec, kv_groups: int = 0, mlp_channels: int = 0, name: str | None = None):
    """The analyzer's model after structured pruning: ``kv_groups`` key/value heads (each with its ``H/K`` query
    heads) and ``mlp_channels`` intermediate channels removed from every layer. Structured pruning needs no
    weight form: the pruned model is a smaller dense one. Introduced in Chapter 5."""
    K, H = spec.num_kv_heads, spec.num_heads
    kv_groups = check_int("kv_groups", kv_groups, minimum=0, maximum=K - 1)
    mlp_channels = check_int("mlp_channels", mlp_channels, minimum=0, maximum=spec.intermediate_size - 1)
    if spec.is_moe or spec.is_mla:
        raise ValueError(f"{spec.name}: structured pruning here covers dense GQA models, not MoE or MLA ones")
    rep = H // K
    return dataclasses.replace(spec, num_heads=(K - kv_groups) * rep, num_kv_heads=K - kv_groups,
                               intermediate_size=spec.intermediate_size - mlp_channels,
                               name=name or f"{spec.name} (-{kv_groups} KV groups, -{mlp_channels} MLP channels)")


def apply_weight_form(ev, form: WeightForm | str | None, device: Device, *, tokens, w_bits, a_bits,
                      group_size: int | None = None, native: bool | None = None):
    """Re-cost the block projections of an evaluated pass (the analyzer's per-operator arrays) in ``form``.

    For every operator in :data:`BLOCK_PROJECTIONS`, the input and output widths are read back from its
    activation traffic (``tokens·in`` and ``tokens·out`` elements), the weight bytes become
    :func:`weight_form_bytes` (bias bytes kept), a low-rank pair gets its operations and intermediate traffic,
    and the time is the roofline's again, with the compute roof scaled by ``peak_scale`` for 2:4 on a device
    with native sparse tensor cores (``native=None`` asks ``supports(device, "sparse_2_4")``). Returns the new
    evaluation and the change in stored weight bytes per pass (for the memory footprint). Introduced in
    Chapter 5.
    """
    f = WeightForm.parse(form)
    if f.kind == "dense":
        return ev, 0.0
    if native is None:
        native = supports(device, "sparse_2_4") == "native"
    ab = np.asarray(a_bits, dtype=float) / 8.0
    wb = np.asarray(w_bits, dtype=float) / 8.0
    if group_size:
        wb = np.where(np.asarray(w_bits) < 16, wb + 4.0 / group_size, wb)
    N = np.asarray(tokens, dtype=float)
    flops, time, bound = ev.flops.copy(), ev.time.copy(), ev.compute_bound.copy()
    parts = {k: v.copy() for k, v in ev.parts.items()}
    total = ev.bytes.copy()
    delta = 0.0
    for i, (name, kind) in enumerate(zip(ev.names, ev.kinds, strict=True)):
        if name not in BLOCK_PROJECTIONS or kind != "gemm":
            continue
        fin = parts["load_act"][i] / (N * ab)
        fout = parts["store_act"][i] / (N * ab)
        cost = linear_form_cost(N, fout, fin, 8.0 * wb, a_bits, f, native_sparse=native)
        new_lw = parts["load_weight"][i] - fin * fout * wb + cost["weight_bytes"]
        delta = delta + ev.counts[i] * (new_lw - parts["load_weight"][i])
        parts["load_weight"][i] = new_lw
        if f.kind == "lowrank":
            r = _rank(fout, fin, f.keep)
            flops[i] = flops[i] - 2.0 * N * fin * fout + cost["flops"]
            parts["load_act"][i] = parts["load_act"][i] + N * r * ab
            parts["store_act"][i] = parts["store_act"][i] + N * r * ab
        total[i] = sum(p[i] for p in parts.values())
        peak = ev.peaks[i] * cost["peak_scale"]
        time[i] = np.maximum(flops[i] / peak, total[i] / device.bandwidth)
        bound[i] = flops[i] / peak >= total[i] / device.bandwidth
    return dataclasses.replace(ev, flops=flops, parts=parts, bytes=total, time=time, compute_bound=bound), delta
