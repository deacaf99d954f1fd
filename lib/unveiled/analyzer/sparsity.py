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

import math
from dataclasses import dataclass

import numpy as np

from .._validate import check_choice, check_int, check_number

__all__ = ["FORMS", "STORAGES", "WeightForm", "linear_form_cost", "weight_form_bytes"]

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


def _rank(o, i, keep):
    return np.maximum(1.0, np.floor(keep * o * i / (o + i)))


def linear_form_cost(tokens, out_features, in_features, w_bits=16, a_bits=16, form: WeightForm | str | None = None,
                     native_sparse: bool = False) -> dict[str, object]:
    """Operations and bytes of a linear layer on ``tokens`` rows with its weight in ``form``.

    Returns ``{"flops", "weight_bytes", "act_bytes", "bytes"}``. Activations are read and written once
    (``a_bits`` each); a low-rank pair also writes and re-reads its ``tokens·r`` intermediate. ``flops`` are
    the operations the hardware executes: ``2·N·in·out`` for dense, unstructured and N:M forms, halved (``n/m``)
    for 2:4 when ``native_sparse`` (the device's sparse tensor cores skip the zeros), and
    ``2·N·r·(in + out)`` for low rank. Introduced in Chapter 5.
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
        if native_sparse and f.hardware_sparse():
            flops = flops * f.n / f.m
    return {"flops": flops, "weight_bytes": wbytes, "act_bytes": act, "bytes": wbytes + act}
