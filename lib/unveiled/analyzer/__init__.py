"""The LLM inference analyzer: LLM-Viewer's per-operator roofline analysis, corrected and validated.

``import unveiled as uv`` exposes the main entry points (:func:`uv.model`, :func:`uv.analyze`,
:func:`uv.generate`, :func:`uv.sweep`); this sub-package holds the pieces: model configs
(:mod:`.configs`), operator costs under two conventions (:mod:`.costs`), the per-operator roofline and
memory footprint (:mod:`.analysis`), pruned and factorized weight forms (:mod:`.sparsity`, Chapter 5), whole generations in closed form (:mod:`.generate`), vectorised grids
(:mod:`.sweep`) and the survey's tables and figures (:mod:`.survey`). Introduced in Chapter 2.
"""

from .analysis import Analysis, MemoryFootprint, analyze
from .configs import SUPPORTED_MODEL_TYPES, ModelSpec, model, model_from_hf_config, model_names
from .costs import BITS, CONVENTIONS, attention_cost, flash_tile, linear_cost
from .generate import Generation, generate
from .sparsity import WeightForm, pruned_spec
from .sweep import max_batch, max_seq_len, sweep

__all__ = [
    "BITS",
    "CONVENTIONS",
    "SUPPORTED_MODEL_TYPES",
    "Analysis",
    "Generation",
    "MemoryFootprint",
    "ModelSpec",
    "WeightForm",
    "analyze",
    "attention_cost",
    "flash_tile",
    "generate",
    "linear_cost",
    "max_batch",
    "max_seq_len",
    "model",
    "model_from_hf_config",
    "model_names",
    "pruned_spec",
    "sweep",
]
