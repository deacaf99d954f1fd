"""Pruning, sparsity and low-rank factorization of the book's decoders (survey §3.2 and §3.4).

* :mod:`.patterns`: sparsity patterns (unstructured, N:M), scores (magnitude, Wanda) and exact masks;
* :mod:`.sparsegpt`: SparseGPT [Frantar & Alistarh 2023], on GPTQ's shared machinery
  (:mod:`unveiled.quant.hessian`);
* :mod:`.unstructured`: :func:`prune_model`, unstructured and N:M pruning of every block projection;
* :mod:`.structured`: removing KV groups and MLP channels into a smaller dense decoder (magnitude,
  activation and LLM-Pruner-style first-order scores), and LoRA recovery;
* :mod:`.lowrank`: truncated SVD and ASVD factorization under a parameter budget;
* :mod:`.speed`: what the CPU makes of it: sparse (CSR) against dense matmuls, decode speed of smaller models;
* :mod:`.experiments`: the cached perplexity sweeps on SmolLM2-135M and the tiny models, and the published
  anchors (Wanda's LLaMA tables).

Introduced in Chapter 5.
"""

from . import experiments as experiments
from .lowrank import *  # noqa: F403
from .patterns import *  # noqa: F403
from .sparsegpt import *  # noqa: F403
from .structured import *  # noqa: F403
from .unstructured import *  # noqa: F403
