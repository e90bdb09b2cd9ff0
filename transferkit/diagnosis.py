"""Bias/variance diagnosis: read the train/validation gap, name what to try next. No TensorFlow here.

Ng's "levels of performance": the *avoidable bias* is the gap between a
target (human-level or Bayes-error proxy; 1.0 when none is given) and the
training accuracy, the *variance* the gap between training and validation
accuracy. A gap counts when it exceeds :data:`GAP` (2 points). High bias:
the model does not fit even its training images (train longer, unfreeze
more, a bigger model, a higher rate, less regularisation); high variance:
it fits them but not new ones (augment, regularise, unfreeze less, more
data). Each remedy names the transferkit flag that applies it.

Training accuracy must be measured in inference mode on the training images,
without dropout or augmentation (the ``accuracy`` Keras logs while training
is neither): :func:`transferkit.training.train_accuracy` does that.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Diagnosis", "diagnose", "GAP", "KINDS"]

#: Smallest gap (accuracy, 0-1) that counts as bias or variance.
GAP = 0.02
#: The possible diagnoses.
KINDS = ("good_fit", "high_bias", "high_variance", "both")

_BIAS = (
    "train longer: raise --epochs / --fine-tune-epochs (and --patience)",
    "fine-tune more of the backbone: --unfreeze {more}",
    "a bigger head: head: {{dense: [256]}} in the recipe",
    "a larger backbone: e.g. --backbone efficientnet_b0",
    "less regularisation: --label-smoothing 0, a lower --weight-decay, head dropout 0.1",
)
_VARIANCE = (
    "more augmentation: --augment strong",
    "label smoothing: --label-smoothing 0.1",
    "weight decay: --weight-decay 1e-4",
    "fine-tune less of the backbone: --unfreeze {fewer}",
    "more training images per class (the surest remedy)",
)


@dataclass(frozen=True)
class Diagnosis:
    """What the train/validation gap says, and what to try.

    Attributes:
        kind: One of :data:`KINDS`.
        train_accuracy: On the training images, in inference mode.
        val_accuracy: On the validation images.
        target_accuracy: The human-level / Bayes proxy the bias is measured
            against (1.0 when none was given).
        avoidable_bias: ``target - train``.
        variance: ``train - val``.
        remedies: What to try, each with the flag that applies it.
    """

    kind: str
    train_accuracy: float
    val_accuracy: float
    target_accuracy: float
    avoidable_bias: float
    variance: float
    remedies: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``metrics.json["diagnosis"]``)."""
        out = asdict(self)
        out["remedies"] = list(self.remedies)
        return out

    def explain(self) -> str:
        """One paragraph: the numbers, the verdict, the remedies."""
        verdict = {"good_fit": "a good fit: neither gap exceeds {gap:.0f} points",
                   "high_bias": "high bias: the model does not fit its own training images well",
                   "high_variance": "high variance: it fits the training images but not new ones",
                   "both": "high bias and high variance"}[self.kind].format(gap=GAP * 100)
        lines = [f"Diagnosis: train accuracy {self.train_accuracy:.4f} (inference mode), validation "
                 f"{self.val_accuracy:.4f}, target {self.target_accuracy:.4f}: avoidable bias "
                 f"{100 * self.avoidable_bias:.1f} points, variance {100 * self.variance:.1f} points; {verdict}."]
        lines += [f"- try {remedy}" for remedy in self.remedies]
        return "\n".join(lines)


def diagnose(train_accuracy: float, val_accuracy: float, *, target_accuracy: float | None = None,
             unfrozen_groups: int = 0, total_groups: int = 0) -> Diagnosis:
    """Compare training and validation accuracy (and a target) and name the remedies.

    Args:
        train_accuracy: On the training images, in inference mode (0-1).
        val_accuracy: On the validation images (0-1).
        target_accuracy: Human-level or Bayes proxy (0-1); ``None`` is 1.0.
        unfrozen_groups: Backbone groups the run fine-tuned (for the
            ``--unfreeze`` remedies).
        total_groups: The backbone's groups.

    Returns:
        The :class:`Diagnosis`.

    Raises:
        ValueError: For an accuracy outside [0, 1].
    """
    target = 1.0 if target_accuracy is None else float(target_accuracy)
    for name, value in (("train_accuracy", train_accuracy), ("val_accuracy", val_accuracy),
                        ("target_accuracy", target)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    bias, variance = target - train_accuracy, train_accuracy - val_accuracy
    high_bias, high_variance = bias > GAP, variance > GAP
    kind = "both" if high_bias and high_variance else "high_bias" if high_bias else \
        "high_variance" if high_variance else "good_fit"
    more = min(total_groups, unfrozen_groups + 2) if total_groups else unfrozen_groups + 2
    fewer = max(0, unfrozen_groups - 2)
    remedies: list[str] = []
    if high_bias:
        remedies += [r.format(more=more) for r in _BIAS if not ("--unfreeze" in r and more == unfrozen_groups)]
    if high_variance:
        remedies += [r.format(fewer=fewer) for r in _VARIANCE if not ("--unfreeze" in r and unfrozen_groups == 0)]
    return Diagnosis(kind, round(float(train_accuracy), 4), round(float(val_accuracy), 4), round(target, 4),
                     round(bias, 4), round(variance, 4), tuple(remedies))
