"""Knowledge distillation: train a small student to imitate a large teacher, then read the gain on the roofline.

A student q_θ learns from a teacher p through a divergence between their next-token distributions at every
position [Hinton et al. 2015]. Which divergence matters: the **forward KL** KL(p‖q) (word-level KD
[Kim & Rush 2016]) makes the student cover every token the teacher likes (*mode covering*); the **reverse
KL** KL(q‖p) (MiniLLM [Gu et al. 2024]) makes it put its mass where the teacher is sure (*mode seeking*);
the **generalized Jensen-Shannon divergence** JSD_β of GKD [Agarwal et al. 2024] interpolates between them;
the **total variation** TV(p, q) is what speculative decoding's acceptance rate measures (α = 1 − TV), so
DistillSpec [Zhou et al. 2024] uses it to train better drafts.

Conventions (the tests check each of them):

* Every loss takes ``student_logits`` and the teacher's logits ``[..., V]`` (or a cached top-k summary, see
  below), divides both by the temperature τ, and multiplies the divergence by τ², Hinton's factor that keeps
  the gradient's size independent of τ. ``reduction="mean"`` averages over positions (optionally masked).
* **Generalized JSD.** With the mixture M = βp + (1 − β)q, JSD_β = β KL(p‖M) + (1 − β) KL(q‖M) (GKD's and
  TRL's convention: β weighs the teacher). Its value vanishes at both ends (JSD_0 = JSD_1 = 0), yet
  JSD_β/β → KL(p‖q) as β → 0 and JSD_β/(1 − β) → KL(q‖p) as β → 1. The book therefore defines the *scaled*
  divergence JSD_β / (β(1 − β)) (``scaled=True``, the default): continuous on [0, 1], equal to the forward KL
  at β = 0, to the reverse KL at β = 1 and to 4·JSD at β = ½. ``scaled=False`` returns the raw JSD_β,
  bounded by the binary entropy h(β) ≤ ln 2.
* **Cached top-k teacher.** :func:`topk_targets` keeps the teacher's k most likely tokens plus one bucket
  holding the rest of the vocabulary's mass. The student's distribution is coarsened to the same k + 1
  buckets, so every divergence is computed exactly on the coarsened pair. By the data-processing
  inequality the coarsened divergence never exceeds the full one, and it equals it when k = V.

The training loop (:func:`distill`) is seeded and counted in steps. Its batches come from a fixed list of
windows and a seeded schedule known in advance, so the teacher's top-k can be computed once for exactly the
windows the run will see (:func:`build_teacher_cache`) and reused by every student, loss and rerun: a
distillation step then costs about as much as a plain one. Sequence-level (black-box) distillation trains on
the teacher's samples (:func:`teacher_samples`); on-policy distillation (``on_policy_fraction`` > 0) scores
the student's own samples with the teacher. Introduced in Chapter 4.

The package, one idea per module:

* :mod:`.divergences`: the four divergences and the losses built on them, the cached top-k teacher
  (:class:`TopKTargets`) and the one-picture example of mode covering and seeking (:func:`bimodal_fit`);
* :mod:`.acceptance`: the speculative-decoding view, α = Σ min(p, q) and the expected tokens per target pass;
* :mod:`.data`: text windows, the seeded batch schedule, the teacher cache and the teacher's samples;
* :mod:`.loop`: :class:`DistillSettings` and the training loop :func:`distill`;
* :mod:`.savings`: teacher vs student on the roofline and measured on this CPU;
* :mod:`.experiments`: the cached tiny and SmolLM2 experiments (registered as ``distill.<name>``);
* :mod:`.report`: small tables for the chapter.
"""

from . import experiments as experiments
from .acceptance import *  # noqa: F403
from .acceptance import expected_tokens_per_call as expected_tokens_per_call  # deprecated alias
from .data import *  # noqa: F403
from .divergences import *  # noqa: F403
from .experiments import *  # noqa: F403
from .loop import *  # noqa: F403
from .report import *  # noqa: F403
from .savings import *  # noqa: F403
