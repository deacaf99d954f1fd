"""unveiled: the shared library of *Inference Unveiled*, a runnable companion to the survey
"LLM Inference Unveiled: Survey and Roofline Model Insights" (Yuan et al., 2024, arXiv 2402.16363).

Import it as ``import unveiled as uv``. The light parts (hardware registry, roofline, analyzer) need only
NumPy and pandas; the parts that run models import PyTorch when first used.
"""

from __future__ import annotations

import importlib

from .datafiles import data_file, list_data_files
from .environment import environment_report, machine_description
from .hardware import DTYPES, Device, canonical_dtype, define_device, device_names, get_device, hardware_table
from .roofline import (
    Operation,
    RooflinePoint,
    attainable_performance,
    bound,
    critical_batch_size,
    elementwise_cost,
    fuse,
    fusion_gain,
    load_compute_store,
    matmul_cost,
    place,
    ridge_point,
    roofline_curve,
    roofline_table,
    roofline_time,
)

__version__ = "0.1.0"

# Names resolved on first use, so `import unveiled` stays fast and does not import torch.
# Maps a public name to the module that defines it.
_LAZY: dict[str, str] = {
    # LLM analyzer (Chapter 2)
    "model_spec": "analyzer",
    "ModelSpec": "analyzer",
    "model_from_hf_config": "analyzer",
    "model_names": "analyzer",
    "analyze": "analyzer",
    "Precision": "analyzer",
    "estimate_generation": "analyzer",
    "GenerationEstimate": "analyzer",
    "sweep": "analyzer",
    "max_batch": "analyzer",
    "max_seq_len": "analyzer",
    "analyzer_explorer": "explorers.analyzer",
    # Kernels (Chapter 8)
    "flash_explorer": "explorers.kernels",
    # Decoding algorithms (Chapter 7)
    "decoding_explorer": "explorers.decoding",
    # Pruning, sparsity and low-rank factorization (Chapter 5)
    "pruning_explorer": "explorers.pruning",
    # Serving (Chapter 9)
    "serving_explorer": "explorers.serving",
    # Measuring this machine (Chapter 1)
    "measure_machine": "measure",
    "measure_bandwidth": "measure",
    "measure_matmul": "measure",
    "measure_kernels": "measure",
    "matmul_paths": "matmul_probe",
    "MachineMeasurement": "measure",
    # Live explorers (Chapter 1)
    "roofline_explorer": "explorers.roofline",
    "kv_explorer": "explorers.kvcache",
    # The book's models (appendix "The models in this book")
    "Decoder": "models",
    "DecoderConfig": "models",
    "KVCache": "models",
    "replace_linears": "models",
    "load_smollm2": "smollm2",
    "perplexity": "evaluation",
}
# Sub-packages reachable as attributes (``uv.labs.roofline.check_attainable``) without an explicit import.
_SUBMODULES = ("labs", "plots", "explorers", "text", "models", "generation", "evaluation", "zoo", "smollm2",
               "calibration", "kvcache", "decoding", "quant", "results", "analyzer", "distill", "measure", "threads",
               "training", "timing", "matmul_probe", "tables", "session", "kernels", "survey_map",
               "accelerators", "serving", "pruning")

__all__ = [
    "DTYPES",
    "Device",
    "Operation",
    "RooflinePoint",
    "attainable_performance",
    "bound",
    "canonical_dtype",
    "critical_batch_size",
    "data_file",
    "define_device",
    "environment_report",
    "device_names",
    "elementwise_cost",
    "fuse",
    "fusion_gain",
    "get_device",
    "hardware_table",
    "list_data_files",
    "load_compute_store",
    "machine_description",
    "matmul_cost",
    "place",
    "ridge_point",
    "roofline_curve",
    "roofline_table",
    "roofline_time",
    *_LAZY,
]


# Deprecated spellings, kept (silently) so that older notebooks run; the book itself uses the new names.
# ``uv.hardware`` is the registry module; calling it (deprecated: ``uv.hardware("a6000")``) still looks a device up.
_DEPRECATED: dict[str, str] = {
    "model": "model_spec",  # read like the `unveiled.models` module
    "generate": "estimate_generation",  # read like text generation (`unveiled.generation.generate`)
}

# In the book build, DataFrames display as reader tables (a dash for missing values, no 0, 1, 2... index).
_tables_installed = importlib.import_module(".tables", __name__).install_book_tables()


def __getattr__(name: str):
    if name in _DEPRECATED:
        return __getattr__(_DEPRECATED[name])
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'unveiled' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
