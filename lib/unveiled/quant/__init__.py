"""Quantization of the book's decoders: reference quantizers, the survey's methods, and real low-bit kernels.

* :mod:`.uniform`: uniform integer quantizers (:class:`QuantSpec`: bits 2–8, symmetric or asymmetric,
  per tensor / channel / token / group), round-to-nearest, packing of 1–8-bit codes into bytes, storage sizes;
* :mod:`.layers`: :class:`QuantLinear` (fake-quantized weights, optional W8A8/W4A4 activation quantization),
  :func:`quantize_model`, :func:`model_size`, :func:`quantized_state_dict`, calibration statistics;
* :mod:`.gptq`: GPTQ [Frantar et al. 2023]; :mod:`.awq`: AWQ [Lin et al. 2024]; :mod:`.smoothing`:
  SmoothQuant [Xiao et al. 2023]; :mod:`.outliers`: LLM.int8() [Dettmers et al. 2022]; :mod:`.rotation`:
  Hadamard rotations, QuaRot-style [Ashkboos et al. 2024];
* :mod:`.kernels`: PyTorch's CPU int8/int4 weight-only kernels and decode timing;
* :mod:`.qpeft`: LoRA adapters on a frozen quantized model (Q-PEFT, QLoRA-style);
* :mod:`.analysis`: the survey's roofline use case for quantization (§3.1.1), computed with the analyzer;
* :mod:`.methods`: the survey's map of quantization methods (Fig. 10) as data;
* :mod:`.experiments`: the cached perplexity sweeps on SmolLM2-135M and the tiny models;
* :mod:`.minifloat`: the FP8/FP6/FP4 element formats bit for bit; :mod:`.formats`: number formats with scales
  (FP8/FP6/FP4, MXFP8/6/4, NVFP4) as quantizer specs; :mod:`.format_experiments`
  and :mod:`.format_choice`: their cached sweeps and the per-layer format choice (Chapter 10).

Introduced in Chapter 3.
"""

from . import analysis as analysis
from . import experiments as experiments
from . import format_choice as format_choice
from . import format_experiments as format_experiments
from . import formats as formats
from . import methods as methods
from . import minifloat as minifloat
from .analysis import *  # noqa: F403
from .awq import *  # noqa: F403
from .experiments import *  # noqa: F403
from .formats import FORMAT_NAMES as FORMAT_NAMES
from .formats import FormatSpec as FormatSpec
from .formats import get_format as get_format
from .gptq import *  # noqa: F403
from .kernels import *  # noqa: F403
from .layers import *  # noqa: F403
from .methods import *  # noqa: F403
from .outliers import *  # noqa: F403
from .qpeft import *  # noqa: F403
from .rotation import *  # noqa: F403
from .smoothing import *  # noqa: F403
from .uniform import *  # noqa: F403
