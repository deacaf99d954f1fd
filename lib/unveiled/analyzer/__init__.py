"""The LLM inference analyzer: LLM-Viewer's per-operator roofline analysis, corrected and validated.

``import unveiled as uv`` exposes the main entry points (:func:`uv.model_spec`, :func:`uv.analyze`,
:func:`uv.estimate_generation`, :func:`uv.sweep`, :class:`uv.Precision`); this sub-package holds the pieces:
bit widths and the precision of a deployment (:mod:`.precision`), model configs (:mod:`.configs`), operator
costs under two conventions (:mod:`.costs`), the per-operator roofline and memory footprint
(:mod:`.analysis`), the roofline's estimate of a whole generation in closed form (:mod:`.estimate`),
vectorised grids (:mod:`.sweep`) and the survey's tables and figures (:mod:`.survey`). Introduced in Chapter 2.

Deprecated spellings, kept so that older notebooks run: ``model`` (now :func:`model_spec`), ``generate`` and
``Generation`` (now :func:`estimate_generation` and :class:`GenerationEstimate`).
"""

from .analysis import Analysis, MemoryFootprint, analyze
from .configs import SUPPORTED_MODEL_TYPES, ModelSpec, model_from_hf_config, model_names, model_spec
from .costs import CONVENTIONS, attention_cost, distinct_experts, flash_tile, linear_cost
from .estimate import GenerationEstimate, estimate_generation
from .precision import BITS, Precision
from .sweep import max_batch, max_seq_len, sweep

__all__ = [
    "BITS",
    "CONVENTIONS",
    "SUPPORTED_MODEL_TYPES",
    "Analysis",
    "GenerationEstimate",
    "MemoryFootprint",
    "ModelSpec",
    "Precision",
    "analyze",
    "attention_cost",
    "distinct_experts",
    "estimate_generation",
    "flash_tile",
    "linear_cost",
    "max_batch",
    "max_seq_len",
    "model_from_hf_config",
    "model_names",
    "model_spec",
    "sweep",
]

# Deprecated names: importable, not advertised in __all__.
from .configs import model as model
from .estimate import Generation as Generation
from .estimate import generate as generate
