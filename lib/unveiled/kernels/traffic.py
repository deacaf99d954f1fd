"""Count the bytes every ATen operator reads and writes: the memory-traffic analogue of ``FlopCounterMode``.

A :class:`ByteCounter` is a ``TorchDispatchMode``: inside ``with ByteCounter():`` every operator PyTorch runs
passes through it, and it records the bytes the operator must read (its tensor inputs) and write (its outputs
and the inputs it mutates). This is *compulsory* traffic per kernel, the convention of the roofline model and
of the book's analyzer: each operator reads each input once and writes each output once; nothing stays in a
cache between operators, nothing is re-read within one. What that means for real programs:

* views (``view``, ``transpose``, ``expand``, ``slice``, ...) move nothing; the kernel that consumes a view
  reads the elements the view addresses, and a broadcast (stride-0) dimension is read once;
* composite operators (``linear``, ``matmul``, ``scaled_dot_product_attention``, ``repeat_interleave``,
  ``reshape``) are decomposed first, so the counter sees the kernels that really run (``mm``, the CPU flash
  attention kernel, the ``clone`` that a reshape of a transposed tensor needs, ...);
* gathers (``embedding``, ``index``, ``index_select``, ``gather``) read the rows they fetch, not the table;
* ``copy_`` and ``fill_`` write their destination without reading it; ``index_copy_`` and ``index_put_``
  write only the slots they fill; other in-place operators read and write their first argument.

Each record also says which module was running (pass the model) and which labelled :meth:`ByteCounter.region`
it ran in, and which storages it touched: :meth:`ByteCounter.bytes_touching` gives the traffic to a given set
of tensors (e.g. the "device memory" a tiled kernel reads and writes, as opposed to its on-chip temporaries).
Works on real and on ``meta`` tensors (shapes only: count the traffic of sizes that do not fit in memory).
Introduced in Chapter 8.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import torch
from torch._C import DispatchKey
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["ByteCounter", "OpRecord", "unique_bytes"]

# operators that allocate or relabel memory without moving data
_NO_TRAFFIC = {"_unsafe_view", "lift_fresh", "lift_fresh_copy", "detach", "detach_", "alias", "empty",
               "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_reshape_alias", "set_",
               "resize_", "_local_scalar_dense", "sym_size", "sym_stride", "sym_numel", "is_same_size"}
# operators that write their destination without reading it first
_WRITE_ONLY = {"copy_", "fill_", "zero_", "normal_", "uniform_", "random_", "bernoulli_", "exponential_"}
# in-place scatters: they write only as many elements as their source (at this argument position) holds
_PARTIAL_WRITE_SOURCE = {"index_copy_": 3, "index_put_": 2, "scatter_": 3}
# gathers: they read only the rows they fetch (as many elements as they output) from the first argument
_GATHERS = {"embedding": 0, "index": 0, "index_select": 0, "gather": 0, "take": 0}


def unique_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor (or view) addresses: a stride-0 (broadcast) dimension counts
    once. For a contiguous tensor this is ``numel · element_size``. Introduced in Chapter 8."""
    if t.layout != torch.strided:
        return t.numel() * t.element_size()
    if t.numel() == 0:
        return 0
    n = 1
    for size, stride in zip(t.shape, t.stride(), strict=True):
        if stride != 0:
            n *= size
    return n * t.element_size()


@dataclass(frozen=True)
class OpRecord:
    """One operator call: ``op`` (e.g. ``"aten.mm"``), the innermost ``module`` and ``region`` it ran in,
    ``read_bytes`` and ``write_bytes``, ``touches``: ``(storage id, bytes, is_write)`` per tensor access, and
    ``broadcast``: whether it read a broadcast view (a stride-0 dimension, as ``expand`` makes), and
    ``time_s``: how long the kernel ran (only with ``ByteCounter(time_ops=True)``)."""

    op: str
    module: str
    region: str
    read_bytes: int
    write_bytes: int
    touches: tuple[tuple[int, int, bool], ...]
    broadcast: bool = False
    time_s: float = 0.0

    @property
    def bytes(self) -> int:
        return self.read_bytes + self.write_bytes


def _tensors(x) -> list[torch.Tensor]:
    return [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]


class ByteCounter(TorchDispatchMode):
    """Record the bytes each ATen operator reads and writes (see the module docstring for the rules).

    ``ByteCounter(model)`` also attributes every operator to the innermost sub-module of ``model`` running
    when it was called (its dotted name, e.g. ``"layers.0.mlp.up_proj"``). Use it as a context manager::

        with ByteCounter(model) as bc:
            model(tokens)
        bc.table()            # one row per operator call
        bc.total_bytes        # everything read and written

    With ``time_ops=True`` each kernel is also timed around its call, the counter's own bookkeeping left out
    (``clock="wall"``, or ``"thread"`` for the calling thread's CPU time, which leaves out the time a busy
    machine makes it wait; meaningful with one PyTorch thread): a per-operator profile whose rows carry bytes.

    Introduced in Chapter 8 (the analogue of ``torch.utils.flop_counter.FlopCounterMode`` for memory).
    """

    def __init__(self, module: torch.nn.Module | None = None, *, time_ops: bool = False, clock: str = "wall"):
        super().__init__()
        if clock not in ("wall", "thread"):
            raise ValueError(f"clock must be 'wall' or 'thread', got {clock!r}")
        self.time_ops = bool(time_ops)
        self._now = time.perf_counter if clock == "wall" else time.thread_time
        if module is not None and not isinstance(module, torch.nn.Module):
            raise TypeError(f"module must be a torch.nn.Module (or None), got {type(module).__name__}")
        self.module = module
        self.records: list[OpRecord] = []
        self._modules: list[str] = []
        self._regions: list[str] = []
        self._hooks: list = []
        self._storages: dict[int, tuple[StorageWeakRef, int]] = {}
        self._next_id = 0
        self._depth = 0

    # -- context ---------------------------------------------------------------------------------------------
    def __enter__(self):
        self._depth += 1
        if self._depth > 1:  # re-entered to count a composite operator's parts: keep counting
            return super().__enter__()
        self.records = []
        self._storages = {}
        if self.module is not None:
            for name, mod in self.module.named_modules():
                self._hooks.append(mod.register_forward_pre_hook(self._push(name)))
                self._hooks.append(mod.register_forward_hook(self._pop))
        return super().__enter__()

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth:
            return super().__exit__(*exc)
        for h in self._hooks:
            h.remove()
        self._hooks = []
        return super().__exit__(*exc)

    def _push(self, name: str):
        def hook(mod, args):
            self._modules.append(name)
        return hook

    def _pop(self, mod, args, out):
        if self._modules:
            self._modules.pop()

    @contextlib.contextmanager
    def region(self, name: str) -> Iterator[None]:
        """Label the operators run inside the ``with`` block (the innermost label wins)."""
        if not isinstance(name, str):
            raise TypeError(f"a region name must be a str, got {type(name).__name__}")
        self._regions.append(name)
        try:
            yield
        finally:
            self._regions.pop()

    # -- counting ---------------------------------------------------------------------------------------------
    def _storage_id(self, t: torch.Tensor) -> int:
        storage = t.untyped_storage()
        key = storage._cdata
        known = self._storages.get(key)
        if known is not None and not known[0].expired():
            return known[1]
        self._next_id += 1
        self._storages[key] = (StorageWeakRef(storage), self._next_id)
        return self._next_id

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.has_kernel_for_dispatch_key(DispatchKey.CompositeImplicitAutograd):
            with self:  # count the kernels the composite operator is made of
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        if self.time_ops:
            t0 = self._now()
            out = func(*args, **kwargs)
            elapsed = self._now() - t0
        else:
            out, elapsed = func(*args, **kwargs), 0.0
        self._record(func, args, kwargs, out, elapsed)
        return out

    def _record(self, func, args, kwargs, out, elapsed: float) -> None:
        name = func.overloadpacket.__name__
        if func.is_view or name in _NO_TRAFFIC:
            return
        touches: list[tuple[int, int, bool]] = []
        mutated: list[torch.Tensor] = []
        broadcast = False
        gather_from = _GATHERS.get(name)
        outputs = _tensors(out)

        def touch(t: torch.Tensor, size: int, is_write: bool) -> None:
            touches.append((self._storage_id(t), size, is_write))

        for i, arg in enumerate(func._schema.arguments):
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            for t in _tensors(value):
                if arg.alias_info is not None and arg.alias_info.is_write:  # mutated in place or an out= buffer
                    mutated.append(t)
                    if name in _PARTIAL_WRITE_SOURCE:
                        source = args[_PARTIAL_WRITE_SOURCE[name]]
                        touch(t, source.numel() * t.element_size(), True)
                        continue
                    touch(t, unique_bytes(t), True)
                    if name not in _WRITE_ONLY and not getattr(arg, "is_out", False):
                        touch(t, unique_bytes(t), False)
                elif gather_from == i and outputs:
                    touch(t, min(unique_bytes(t), outputs[0].numel() * t.element_size()), False)
                else:
                    touch(t, unique_bytes(t), False)
                    broadcast = broadcast or any(st == 0 and n > 1 for n, st in zip(t.shape, t.stride(), strict=True))
        for t in outputs:
            if not any(t is m for m in mutated):  # an in-place operator returns its mutated argument
                touch(t, unique_bytes(t), True)
        read = sum(size for _, size, w in touches if not w)
        write = sum(size for _, size, w in touches if w)
        self.records.append(OpRecord(f"aten.{name}", self._modules[-1] if self._modules else "",
                                     self._regions[-1] if self._regions else "", read, write, tuple(touches),
                                     broadcast, elapsed))

    # -- results ----------------------------------------------------------------------------------------------
    @property
    def read_bytes(self) -> int:
        return sum(r.read_bytes for r in self.records)

    @property
    def write_bytes(self) -> int:
        return sum(r.write_bytes for r in self.records)

    @property
    def total_bytes(self) -> int:
        return self.read_bytes + self.write_bytes

    def table(self) -> pd.DataFrame:
        """One row per operator call: ``op, module, region, read_bytes, write_bytes, bytes, time_s``."""
        cols = ["op", "module", "region", "read_bytes", "write_bytes", "bytes", "time_s"]
        return pd.DataFrame([{"op": r.op, "module": r.module, "region": r.region, "read_bytes": r.read_bytes,
                              "write_bytes": r.write_bytes, "bytes": r.bytes, "time_s": r.time_s}
                             for r in self.records], columns=cols)

    def by_op(self) -> pd.DataFrame:
        """Calls and bytes summed per ATen operator, largest first."""
        t = self.table()
        g = t.groupby("op").agg(calls=("op", "size"), read_bytes=("read_bytes", "sum"),
                                write_bytes=("write_bytes", "sum"), bytes=("bytes", "sum"))
        return g.sort_values("bytes", ascending=False).reset_index()

    def bytes_touching(self, *tensors: torch.Tensor) -> dict[str, int]:
        """Bytes read from and written to the storages of ``tensors`` (views share their base's storage).

        Call it while the tensors are alive. Returns ``{"read_bytes": ..., "write_bytes": ..., "bytes": ...}``.
        """
        ids = set()
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"bytes_touching takes tensors, got {type(t).__name__}")
            known = self._storages.get(t.untyped_storage()._cdata)
            if known is not None and not known[0].expired():
                ids.add(known[1])
        r = w = 0
        for rec in self.records:
            for sid, size, is_write in rec.touches:
                if sid in ids:
                    if is_write:
                        w += size
                    else:
                        r += size
        return {"read_bytes": r, "write_bytes": w, "bytes": r + w}

