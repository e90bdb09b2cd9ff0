"""The freeze planner: data size x similarity to ImageNet → an explained plan.

Pure functions over dataclasses; no TensorFlow. The measurements that feed
it (:class:`DataProfile`, :class:`Similarity`) are taken by
:mod:`transferkit.measure`; :func:`plan_freeze` turns them into a
:class:`FreezePlan` that :func:`transferkit.finetune.finetune` executes.

The four quadrants (CS231n transfer-learning notes, after Yosinski et al.
2014, "How transferable are features in deep neural networks?"):

========== ============================================================
small      similar: a linear head on frozen features, then the top third
           of the groups fine-tuned in a *race* (below).
small      different: the top groups are the most ImageNet-specific, so
           the backbone is cut where a cross-validated linear probe of the
           features is best, *if* that beats the whole backbone by more
           than the noise (below); a head on those features with strong
           augmentation; then the kept groups but the stem fine-tuned in a
           race.
large      similar: fine-tune the top third of the groups at a tenth of
           the head's learning rate.
large      different: fine-tune every group but the stem with
           discriminative learning rates (earlier groups lower).
========== ============================================================

Small data is where single measurements mislead (20 images per class: one
image is five points of a class's accuracy), so its decisions rest on
evidence with a stated noise (issue 13; ``make bench-planner-small``):

* **Cut** only when a ``k``-fold ridge probe (k = 5, fewer when a class has
  fewer images) of the cut's features beats the whole backbone's by more
  than ``CUT_MARGIN_SE = 2`` standard errors of the fold-paired difference,
  every class has ``MIN_CUT_PER_CLASS = 12`` training images or more (with
  8, every cut the probe chose lost test accuracy), and not when the blur
  reference (below) says the shift is the upsampling's. A first version cut at the earliest group within a point
  of the best single-split probe, and lost up to 35 points to a frozen head.
* **Race**: stage 2 (fine-tuning) is raced against stage 1 (the frozen
  head) image by image on the validation split, and discarded when it
  ends behind (``RACE_MARGIN_SE = 0`` standard errors of the paired
  difference); the explanation states that standard error, so the user
  sees how little 40 validation images resolve (5 to 8 points). Requiring
  stage 2 to *lead* by one error discarded real gains on the sign digits;
  letting it *trail* by one error kept real losses on CIFAR (README).
* **Augmentation keeps the cache on**: the head trains on the cached
  features of ``AUGMENT_VIEWS = 8`` fixed views of each image (the image
  and seeded augmented copies), one feature pass for all epochs; live
  augmentation turned the cache off and left the head unconverged in its
  epoch budget (the README's table compares the two).
* **Blur reference**: images upsampled by ``f >= 2`` are measured again
  blurred by another factor of 2; the shift's growth per doubling of blur,
  extrapolated back, estimates the content's own shift
  (:func:`blur_free_shift`). The quadrant still uses the measured shift (a
  network must adapt to the blur too, which fine-tuning does), but a shift
  that is mostly blur is no reason to drop the upper groups.

Thresholds, and why (none was fitted to the datasets used in the tests):

* **Small** is judged per class and against the parameters at stake.
  ``SMALL_PER_CLASS = 30``: below about 30 labelled images per class a
  linear probe on frozen features matches or beats fine-tuning (few-shot
  studies: Chen et al. 2019, "A Closer Look at Few-shot Classification";
  Tian et al. 2020, "Rethinking Few-Shot Image Classification"), while from
  about 30 per class up fine-tuning wins (Kornblith et al. 2019, "Do Better
  ImageNet Models Transfer Better?", Caltech-101 at 30 per class). The data
  is also small when it cannot pay for the top group:
  ``PARAMS_PER_IMAGE = 10_000`` trainable backbone parameters per training
  image is the budget, between the 7,700 of ResNet-50 fine-tuned on
  Caltech-101 (3,060 images) and the 23,500 of ResNet-50 on VTAB-1k (1,000
  images), both of which still beat frozen features. Fine-tuned groups are
  also capped by that budget.
* **Similar** is judged on the *activation shift*: for every BatchNorm
  layer of the backbone, the target images' per-channel activation
  distribution is compared with the running statistics that layer learned
  on ImageNet (a Gaussian per channel, as BatchNorm itself assumes; the
  same statistics AdaBN re-estimates for domain adaptation, Li et al.
  2016). The shift of a channel is ``sqrt(2 KL)``, which for a pure mean
  change is the change in ImageNet standard deviations, i.e. Cohen's d.
  The score is the median over channels, averaged over the deeper half of
  the layers (the task-specific features, Yosinski et al.), and
  ``similarity = 1 / (1 + (d / 0.2)^2)``: 1 for ImageNet's own statistics,
  0.5 at ``SHIFT_SMALL = 0.2`` (Cohen's "small" effect size), falling
  towards 0 as the shift grows. ``similarity >= 0.5`` is similar: only a
  shift below a small effect leaves the ImageNet features in place. A
  shift above it already calls for adapting the lower groups too: running
  a backbone away from its training resolution alone moves BatchNorm
  statistics enough to cost accuracy until the network is fine-tuned
  (Touvron et al. 2019, "Fixing the train-test resolution discrepancy").
  (A first version used Cohen's "medium" 0.5; it called CIFAR-10 at 96 px,
  d = 0.38, similar, and that plan lost 6.5 points to fine-tuning every
  group. The README's benchmark section records this.)
* **Discriminative rates** (large+different) fall geometrically from the
  top group's rate to ``span`` times it at the lowest fine-tuned group
  (ULMFiT, Howard & Ruder 2018; fastai's ``slice(lo, hi)``). The span is
  measured, not fixed: the shallow half's activation shift over the deep
  half's, clipped to ``[0.1, 1]``. Earlier groups learn slower in the
  proportion that their statistics are less shifted: when the low-level
  statistics moved as much as the high-level ones (blurred, upsampled
  images) every group learns at the same rate.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Sequence

__all__ = [
    "DataProfile",
    "Similarity",
    "GroupInfo",
    "FreezePlan",
    "plan_freeze",
    "plan_opaque",
    "size_verdict",
    "similarity_from_shift",
    "discriminative_rates",
    "discriminative_span",
    "override_plan",
    "fixed_plan",
    "SMALL_PER_CLASS",
    "SMALL_REGRESSION",
    "PARAMS_PER_IMAGE",
    "SHIFT_SMALL",
    "CUT_MARGIN_SE",
    "MIN_CUT_PER_CLASS",
    "RACE_MARGIN_SE",
    "AUGMENT_VIEWS",
    "paired_gain",
    "race_verdict",
    "blur_free_shift",
]

#: Below this many training images per class (median) the data is small.
SMALL_PER_CLASS = 30
#: Regression has no classes: below this many training images it is small,
#: as if its targets' range held ten classes of ``SMALL_PER_CLASS``. A rule
#: of thumb carried over from classification, not measured on regression.
SMALL_REGRESSION = 10 * SMALL_PER_CLASS
#: Trainable backbone parameters one training image can pay for.
PARAMS_PER_IMAGE = 10_000
#: Activation shift (Cohen's d) at which similarity is 0.5: "small".
SHIFT_SMALL = 0.2
#: Similarity at or above which the data counts as similar to ImageNet.
SIMILAR_AT = 0.5
#: Lowest group's learning rate relative to the top group's: the floor of the
#: measured span, and the span when nothing was measured.
DISCRIMINATIVE_SPAN = 0.1
#: Share of groups, from the top, fine-tuned on large similar data.
SIMILAR_SHARE = 1 / 3
#: Largest over smallest class at which the plan suggests class weights.
IMBALANCED_AT = 3.0
#: Small data cuts the backbone only when the cut's cross-validated probe
#: beats the whole backbone's by more than this many standard errors of
#: the fold-paired difference (two: the best of many cuts is picked, so a
#: one-error lead is expected by chance alone).
CUT_MARGIN_SE = 2.0
#: Folds a probe needs before its lead may cut the backbone (a standard
#: error from 2 or 3 folds has too few degrees of freedom to trust).
MIN_CUT_FOLDS = 4
#: Training images the smallest class needs before a probe's lead may cut
#: the backbone. With fewer, a ridge probe fits a handful of images per class,
#: where narrower features (112 after ``block_16`` of MobileNetV2-0.35 against
#: the whole backbone's 1,280) are easier to fit whatever they describe; the
#: probe's lead then did not carry over to the trained model. Measured (``make bench-planner-small``, seeds
#: 0-2): at 8 training images per class every cut the probe chose lost test
#: accuracy (sign digits: 3 of 3 seeds cut, 3.1 points lost on the mean;
#: CIFAR: 1 of 3, 4.4 points on that seed); at 16 per class the sign digits'
#: two cuts gained 2.7 and 1.2 points. 12 lies between the two; no size in
#: between was measured.
MIN_CUT_PER_CLASS = 12
#: Small data discards stage 2 when it trails stage 1 on the validation
#: images by more than this many standard errors of the paired difference.
#: Measured on the small-data benchmark (README): requiring stage 2 to lead
#: by one error discarded real gains (40 validation images cannot resolve a
#: 5-point gain), letting it trail by one error kept real losses; 0 (stage 2
#: stays when it is level or ahead) did best on both datasets.
RACE_MARGIN_SE = 0.0
#: Fixed views per training image (the image and augmented copies) whose
#: frozen features stage 1 trains on when small data is augmented.
AUGMENT_VIEWS = 8
#: The planner's head in every quadrant: pooled features → dropout → output,
#: the linear classifier of the transfer literature (Kornblith et al. 2019).
LINEAR_HEAD = {"pooling": "avg", "dense": [], "dropout": 0.2, "batch_norm": False, "activation": "relu", "l1": 0.0,
               "l2": 0.0}


@dataclass(frozen=True)
class DataProfile:
    """How much training data there is.

    Attributes:
        images: Training images.
        classes: Classes.
        per_class_min: Fewest training images of any class.
        per_class_median: Median training images per class.
        imbalance: Largest class over smallest class.
        resolution: Median original ``(height, width)``, when known.
        kind: What the counts count: ``"class"`` (one class per image),
            ``"label"`` (multilabel: images with each label) or ``"target"``
            (regression: every image, once).
    """

    images: int
    classes: int
    per_class_min: int
    per_class_median: float
    imbalance: float
    resolution: tuple[int, int] | None = None
    kind: str = "class"

    @classmethod
    def from_counts(cls, counts: Sequence[int], resolution: tuple[int, int] | None = None, *,
                    images: int | None = None, kind: str = "class") -> "DataProfile":
        """Profile from images per class.

        Args:
            counts: Training images of each class (multilabel: images with
                each label, so that they may sum to more than the images).
            resolution: Median original image size, if measured.
            images: Training images; ``None`` is ``sum(counts)``.
            kind: What the counts count (see the attribute).

        Returns:
            The profile.

        Raises:
            ValueError: When ``counts`` is empty or holds a negative count.
        """
        counts = [int(c) for c in counts]
        if not counts or min(counts) < 0:
            raise ValueError(f"counts must be a non-empty list of image counts per class, got {counts!r}.")
        ordered = sorted(counts)
        middle = len(ordered) // 2
        median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
        smallest = ordered[0]
        return cls(
            images=sum(counts) if images is None else int(images),
            classes=len(counts),
            per_class_min=smallest,
            per_class_median=float(median),
            imbalance=round(ordered[-1] / smallest, 2) if smallest else math.inf,
            resolution=resolution,
            kind=kind,
        )


@dataclass(frozen=True)
class Similarity:
    """Measured similarity of the data to the backbone's ImageNet training data.

    Attributes:
        score: ``1 / (1 + (shift / SHIFT_SMALL)^2)``, in (0, 1].
        shift: Activation shift of the deeper half of the BatchNorm layers,
            in ImageNet standard deviations (Cohen's d).
        shift_shallow: The same for the shallower half (low-level
            statistics: colour, contrast, texture).
        method: How it was measured.
        sample: Images measured.
        probe: Linear-probe validation accuracy of each group's output on
            the sample, ``{group: accuracy}``, input to output (the mean
            over the folds).
        declared: Whether the user declared similarity instead of measuring.
        probe_folds: Each group's probe accuracy in each cross-validation
            fold, ``{group: [accuracy, ...]}``; the folds' spread is the
            probe's noise.
        upsampling: How much the images were upsampled to the input size,
            when the blur reference was measured (2 or more).
        shift_blurred: The deep shift of the same images blurred by another
            factor of 2: the reference that tells the upsampling's share.
    """

    score: float
    shift: float | None = None
    shift_shallow: float | None = None
    method: str = "activation shift against BatchNorm ImageNet statistics"
    sample: int = 0
    probe: dict[str, float] = field(default_factory=dict)
    declared: bool = False
    probe_folds: dict[str, list[float]] = field(default_factory=dict)
    upsampling: float | None = None
    shift_blurred: float | None = None

    @property
    def similar(self) -> bool:
        """Whether the score reaches :data:`SIMILAR_AT`."""
        return self.score >= SIMILAR_AT

    @classmethod
    def declare(cls, similar: bool, measured: "Similarity | None" = None) -> "Similarity":
        """A similarity the user states instead of measuring.

        Args:
            similar: The declaration.
            measured: A measurement kept for the record (and its linear probe).

        Returns:
            Score 1 (similar) or 0 (different), ``declared=True``.
        """
        if measured is None:
            return cls(score=1.0 if similar else 0.0, method="declared by the user", declared=True)
        return replace(measured, score=1.0 if similar else 0.0, declared=True,
                       method=f"declared by the user (measured score {measured.score:.2f})")


@dataclass(frozen=True)
class GroupInfo:
    """One layer group of the backbone, as the planner sees it.

    Attributes:
        name: Group name, e.g. ``"block_13"``.
        params: Parameters of the group's layers.
        single_cut: Whether the backbone can be cut after this group.
    """

    name: str
    params: int
    single_cut: bool = True


@dataclass(frozen=True)
class FreezePlan:
    """Which groups freeze, train or go, at which rates, and why.

    Attributes:
        quadrant: ``"small+similar"``, ``"small+different"``,
            ``"large+similar"`` or ``"large+different"``.
        frozen: Groups that never train, input to output.
        fine_tuned: Groups trained in stage 2, input to output.
        dropped: Groups removed above the cut (the head sits on the
            output of the last kept group).
        cut: Last kept group when groups are dropped, else ``None``.
        head: The head's settings (:class:`transferkit.heads.HeadConfig` fields).
        learning_rate: Stage 1 (head) learning rate.
        group_learning_rates: Peak stage-2 learning rate of each
            fine-tuned group.
        span: Lowest fine-tuned group's rate over the top group's (1 when
            every group has the same rate).
        epochs: Stage 1 epochs.
        fine_tune_epochs: Stage 2 epochs.
        gradual: Unfreeze one group at a time over stage 2 (ULMFiT).
        augment: ``"none"``, ``"light"`` or ``"strong"``.
        profile: The data-size measurement.
        similarity: The similarity measurement (``None`` with the planner off).
        reasons: One sentence per decision, in order.
        overrides: ``{field: {"plan": value, "used": value}}`` for every
            decision an explicit setting overrode.
        race: Race stage 2 against stage 1 image by image on the
            validation images and discard it when it trails by more than
            :data:`RACE_MARGIN_SE` standard errors (small data; 0: when it
            ends behind); without a race, stage 2 is likewise undone when
            its validation accuracy ends below stage 1's.
        augment_views: Stage 1 trains on cached features of this many
            fixed views of each training image (the image and augmented
            copies), so that augmentation keeps the feature cache on, and
            stage 2 trains on the images unaugmented; 0 augments live
            images in both stages (the cache is then off).
    """

    quadrant: str
    frozen: tuple[str, ...]
    fine_tuned: tuple[str, ...]
    dropped: tuple[str, ...]
    cut: str | None
    head: dict[str, Any]
    learning_rate: float
    group_learning_rates: dict[str, float]
    span: float
    epochs: int
    fine_tune_epochs: int
    gradual: bool
    augment: str
    profile: DataProfile
    similarity: Similarity | None
    reasons: tuple[str, ...]
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    race: bool = False
    augment_views: int = 0

    @property
    def unfreeze(self) -> int:
        """Groups fine-tuned in stage 2, counted from the top of the kept backbone."""
        return len(self.fine_tuned)

    def explain(self) -> str:
        """The plan in plain language, citing the measurements."""
        lines = [f"Plan: {self.quadrant}."]
        lines += [f"- {reason}" for reason in self.reasons]
        for name, change in self.overrides.items():
            lines.append(f"- Overridden by you: {name} = {change['used']!r} (the plan said {change['plan']!r}).")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, the explanation included."""
        out = asdict(self)
        out["unfreeze"] = self.unfreeze
        out["explanation"] = self.explain()
        return json.loads(json.dumps(out))  # tuples become lists, as in metrics.json

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FreezePlan":
        """The plan :meth:`to_dict` wrote (a resumed run reads its plan back instead of re-measuring).

        Args:
            data: :meth:`to_dict`'s output, e.g. from ``metrics.json`` or a run's saved state.

        Returns:
            The equal :class:`FreezePlan`.

        Raises:
            ValueError: When a field is missing or of the wrong shape.
        """
        try:
            values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
            for name in ("frozen", "fine_tuned", "dropped", "reasons"):
                values[name] = tuple(values[name])
            profile = dict(values["profile"])
            if profile.get("resolution") is not None:
                profile["resolution"] = tuple(profile["resolution"])
            values["profile"] = DataProfile(**profile)
            if values.get("similarity") is not None:
                values["similarity"] = Similarity(**values["similarity"])
            return cls(**values)
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a freeze plan written by FreezePlan.to_dict ({type(error).__name__}: "
                             f"{error})") from None


def size_verdict(profile: DataProfile, top_group_params: int) -> tuple[bool, str]:
    """Whether the data is small, and the sentence that says why.

    Args:
        profile: The data profile.
        top_group_params: Parameters of the backbone's top group.

    Returns:
        ``(small, reason)``.
    """
    budget = PARAMS_PER_IMAGE * profile.images
    per_class = f"{profile.per_class_median:g}"
    head = (f"{profile.images:,} training images" if profile.kind == "target" else
            f"{profile.images:,} training images, median {per_class} per {profile.kind}")
    if profile.kind == "target" and profile.images < SMALL_REGRESSION:
        return True, (f"{head}: small (regression: under {SMALL_REGRESSION}, as if the targets' range held ten "
                      f"classes of {SMALL_PER_CLASS}; a rule carried over from classification, not measured).")
    if profile.kind != "target" and profile.per_class_median < SMALL_PER_CLASS:
        return True, (f"{head}: small (under {SMALL_PER_CLASS} per class one image moves a class's accuracy by "
                      f"points, so each decision below states its evidence and noise).")
    if top_group_params > budget:
        return True, (f"{head}: small for this backbone (its top group alone has "
                      f"{top_group_params:,} parameters, more than the {budget:,} that "
                      f"{PARAMS_PER_IMAGE:,} per image allow).")
    enough = f"at least {SMALL_REGRESSION}" if profile.kind == "target" else f"at least {SMALL_PER_CLASS} per class"
    return False, f"{head}: large enough to fine-tune ({enough})."


def similarity_from_shift(shift: float) -> float:
    """Similarity score of an activation shift: ``1 / (1 + (shift / 0.2)^2)``.

    Args:
        shift: Activation shift in ImageNet standard deviations, >= 0.

    Returns:
        The score in (0, 1]; 0.5 at :data:`SHIFT_SMALL`.

    Raises:
        ValueError: For a negative or non-finite shift.
    """
    if not math.isfinite(shift) or shift < 0:
        raise ValueError(f"shift must be a finite number >= 0, got {shift!r}.")
    return 1.0 / (1.0 + (shift / SHIFT_SMALL) ** 2)


def discriminative_rates(groups: Sequence[str], top_rate: float, span: float = DISCRIMINATIVE_SPAN) -> dict[str, float]:
    """Geometric learning rates from ``top_rate * span`` (first) to ``top_rate`` (last).

    Args:
        groups: Fine-tuned groups, input to output.
        top_rate: Learning rate of the last group.
        span: Lowest rate over highest; 1 gives every group ``top_rate``.

    Returns:
        ``{group: rate}``.
    """
    n = len(groups)
    if n <= 1:
        return {g: top_rate for g in groups}
    return {g: top_rate * span ** ((n - 1 - i) / (n - 1)) for i, g in enumerate(groups)}


def discriminative_span(similarity: Similarity) -> tuple[float, str]:
    """Lowest fine-tuned group's rate over the top group's, and why.

    Args:
        similarity: The measurement; its shallow and deep activation shifts
            set the span.

    Returns:
        ``(span, reason)``; ``span`` in ``[DISCRIMINATIVE_SPAN, 1]``.
    """
    if similarity.shift is None or similarity.shift_shallow is None or similarity.shift <= 0:
        return DISCRIMINATIVE_SPAN, "no shift profile was measured, so the default span"
    ratio = similarity.shift_shallow / similarity.shift
    span = min(1.0, max(DISCRIMINATIVE_SPAN, ratio))
    return span, (f"the shallow layers' shift ({similarity.shift_shallow:.2f}) over the deep layers' "
                  f"({similarity.shift:.2f})" + (", clipped" if span != ratio else ""))


def _affordable(groups: Sequence[GroupInfo], images: int) -> int:
    """Groups, from the top, whose parameters ``images`` images can pay for."""
    budget, total, count = PARAMS_PER_IMAGE * images, 0, 0
    for group in reversed(groups):
        total += group.params
        if total > budget:
            break
        count += 1
    return count


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean of ``values`` and its standard error (infinite for fewer than two values).

    Raises:
        ValueError: When ``values`` is empty.
    """
    if not values:
        raise ValueError("mean_se needs at least one value.")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.inf
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def paired_gain(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean of ``a - b`` over paired measurements and its standard error.

    Args:
        a, b: The same folds (or images) scored two ways.

    Returns:
        ``(mean difference, standard error)``; the error is infinite for
        fewer than two pairs.

    Raises:
        ValueError: When the two have different lengths or are empty.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_gain needs two non-empty sequences of equal length, got {len(a)} and {len(b)}.")
    return mean_se([x - y for x, y in zip(a, b)])


def race_verdict(stage2_correct: Sequence[bool], stage1_correct: Sequence[bool],
                 margin: float = RACE_MARGIN_SE) -> dict[str, Any]:
    """Whether fine-tuning (stage 2) stays, raced against the frozen head (stage 1) on the validation images.

    Stage 2 starts from stage 1's head, at a tenth of its rate, with
    BatchNorm frozen; it is discarded when it trails stage 1 by more than
    ``margin`` standard errors of the paired per-image difference (both
    models classify the same images, so only the images they disagree on
    count), and kept otherwise.

    Args:
        stage2_correct: Per validation image, whether stage 2's model is right.
        stage1_correct: The same for stage 1's.
        margin: Standard errors stage 2 may trail by (negative: must lead by).

    Returns:
        ``{"stage1": acc, "stage2": acc, "gain": g, "se": e, "margin_se":
        margin, "kept": bool, "reason": sentence}``.
    """
    a = [1.0 if c else 0.0 for c in stage2_correct]
    b = [1.0 if c else 0.0 for c in stage1_correct]
    gain, se = paired_gain(a, b)
    kept = gain >= (-margin * se if math.isfinite(se) else 0.0)
    first, second = sum(b) / len(b), sum(a) / len(a)
    noise = f"{gain:+.3f} ± {se:.3f} (paired standard error over {len(a)} validation images)"
    rule = ("level or ahead" if margin == 0 else f"at least {-margin:g} standard error(s) ahead" if margin < 0
            else f"no more than {margin:g} standard error(s) behind")
    verdict = f"stage 2 stays when {rule}, so " + ("stage 2 is kept." if kept
                                                  else "stage 1's head is kept and stage 2 discarded.")
    reason = (f"Race: fine-tuning (stage 2, {second:.3f}) against the frozen head (stage 1, {first:.3f}): "
              f"{noise}; {verdict}")
    return {"stage1": round(first, 4), "stage2": round(second, 4), "gain": round(gain, 4),
            "se": round(se, 4) if math.isfinite(se) else None, "margin_se": margin, "kept": kept,
            "reason": reason}


def blur_free_shift(similarity: Similarity) -> float | None:
    """The deep shift the images would have without the upsampling's blur (an estimate), or ``None``.

    The shift is measured at the images' own upsampling ``f`` and again
    with another factor of 2 of blur; assuming it grows linearly in
    ``log2`` of the blur, extrapolating back to ``f = 1`` removes the
    upsampling's share: ``shift - log2(f) * (shift_blurred - shift)``,
    floored at 0.

    Args:
        similarity: A measurement with ``upsampling`` and ``shift_blurred``.

    Returns:
        The estimate, or ``None`` when no blur reference was measured.
    """
    if similarity.shift is None or similarity.shift_blurred is None or not similarity.upsampling:
        return None
    per_doubling = max(0.0, similarity.shift_blurred - similarity.shift)
    return max(0.0, similarity.shift - math.log2(similarity.upsampling) * per_doubling)


def _blur_note(similarity: Similarity) -> str | None:
    """The explanation's sentence on the upsampling's share of the shift, when it was measured."""
    content = blur_free_shift(similarity)
    if content is None:
        return None
    share = similarity.shift - content
    return (f"Blur reference: blurring the images by another factor of 2 moves the deep shift from "
            f"{similarity.shift:.2f} to {similarity.shift_blurred:.2f}, so the x{similarity.upsampling:g} "
            f"upsampling accounts for an estimated {share:.2f} of it and the content for {content:.2f} "
            f"(similarity {similarity_from_shift(content):.2f} without the blur)"
            + ("; the content alone would be similar." if similarity_from_shift(content) >= SIMILAR_AT
               else "."))


def _fold_summary(folds: Sequence[float]) -> str:
    """``"0.71 ± 0.03"``: a probe's mean accuracy and its standard error over the folds."""
    mean, se = mean_se(folds)  # a cut is judged on 4 folds or more: the error is finite
    return f"{mean:.2f} ± {se:.2f}"


def _best_cut(groups: Sequence[GroupInfo], similarity: Similarity, per_class_min: int) -> tuple[int, str]:
    """Index of the group to cut after for small+different data, and why.

    The whole backbone is the default. A cut wins only when the images'
    content (not the upsampling's blur) is different, every class has at
    least :data:`MIN_CUT_PER_CLASS` training images, and the cut's
    cross-validated probe beats the whole backbone's by more than
    :data:`CUT_MARGIN_SE` standard errors of the fold-paired difference.
    """
    whole = len(groups) - 1
    top = groups[-1].name
    content = blur_free_shift(similarity)
    if content is not None and similarity_from_shift(content) >= SIMILAR_AT:
        return whole, (f"the shift is mostly the x{similarity.upsampling:g} upsampling's blur (the content's "
                       f"estimated shift is {content:.2f}): the upper groups' ImageNet features still describe "
                       "this content, so the whole backbone is kept")
    folds = similarity.probe_folds
    cuttable = [i for i, g in enumerate(groups) if g.single_cut and g.name in folds and g.name in similarity.probe]
    if top not in folds or not cuttable:
        return whole, "no cross-validated linear probe was measured, so the whole backbone is kept"
    k = len(folds[top])
    if k < MIN_CUT_FOLDS:
        return whole, (f"the linear probe had {k} folds (a class has fewer than {MIN_CUT_FOLDS} images in the "
                       f"sample), too few to judge a cut's lead, so the whole backbone is kept")
    probe = similarity.probe
    best = max(probe[groups[i].name] for i in cuttable)
    # The earliest group within one point of the best: earlier features are more generic.
    index = next(i for i in cuttable if probe[groups[i].name] >= best - 0.01)
    if index == whole:
        return whole, (f"a {k}-fold linear probe scores the whole backbone's features best "
                       f"({_fold_summary(folds[top])}), so none is dropped")
    name = groups[index].name
    gain, se = paired_gain(folds[name], folds[top])
    lead = (f"a {k}-fold linear probe scores {name} best ({_fold_summary(folds[name])} against the whole "
            f"backbone's {_fold_summary(folds[top])}: {gain:+.3f} ± {se:.3f}, paired over the folds)")
    if gain > CUT_MARGIN_SE * se and per_class_min < MIN_CUT_PER_CLASS:
        return whole, lead + (f", but the smallest class has {per_class_min} training images (fewer than "
                              f"{MIN_CUT_PER_CLASS}), too few for a probe's lead to carry over to the trained model "
                              "(measured: such cuts lost test accuracy), so the whole backbone is kept")
    if gain > CUT_MARGIN_SE * se:
        return index, lead + f", more than {CUT_MARGIN_SE:g} standard errors"
    return whole, lead + (f", not more than {CUT_MARGIN_SE:g} standard errors: within the noise, so the "
                          "whole backbone is kept")


def plan_freeze(
    profile: DataProfile,
    similarity: Similarity,
    groups: Sequence[GroupInfo],
    *,
    learning_rate: float = 3e-3,
    epochs: int = 10,
    fine_tune_epochs: int = 15,
    gradual: bool = False,
    backbone: str = "the backbone",
    image_size: int | None = None,
) -> FreezePlan:
    """Decide which groups freeze, train or go, and explain it.

    Args:
        profile: Size of the training data.
        similarity: Measured (or declared) similarity to ImageNet.
        groups: The backbone's groups, input to output.
        learning_rate: Stage 1 learning rate; stage 2 peaks at a tenth.
        epochs: Stage 1 epoch budget.
        fine_tune_epochs: Stage 2 epoch budget.
        gradual: Unfreeze one group at a time over stage 2.
        backbone: Name used in the explanation.
        image_size: Input side the network sees, to note resampling.

    Returns:
        The :class:`FreezePlan`.

    Raises:
        ValueError: When ``groups`` is empty.
    """
    if not groups:
        raise ValueError(f"{backbone} has no layer groups to plan over.")
    names = [g.name for g in groups]
    small, size_reason = size_verdict(profile, groups[-1].params)
    quadrant = f"{'small' if small else 'large'}+{'similar' if similarity.similar else 'different'}"
    reasons = [size_reason, _similarity_reason(similarity)] + _data_notes(profile, image_size)
    blur = _blur_note(similarity)
    if blur:
        reasons.append(blur)
    stage2_rate = learning_rate / 10
    decide = {"small+similar": _small_similar, "small+different": _small_different,
              "large+similar": _large_similar, "large+different": _large_different}[quadrant]
    decision = decide(groups, profile, similarity, stage2_rate=stage2_rate, epochs=epochs,
                      fine_tune_epochs=fine_tune_epochs, backbone=backbone)
    reasons.append(decision.reason)
    fine_tuned = decision.fine_tuned
    use_gradual = gradual and decision.allows_gradual and bool(fine_tuned)
    if use_gradual:
        reasons.append(f"Gradual unfreezing: stage 2 adds one group at a time, from {fine_tuned[-1]} down.")
    kept_names = names[: len(names) - len(decision.dropped)]
    return FreezePlan(
        quadrant=quadrant,
        frozen=tuple(n for n in kept_names if n not in fine_tuned),
        fine_tuned=tuple(fine_tuned),
        dropped=tuple(decision.dropped),
        cut=decision.cut,
        head=dict(LINEAR_HEAD),
        learning_rate=learning_rate,
        group_learning_rates=discriminative_rates(fine_tuned, stage2_rate, decision.span),
        span=decision.span,
        epochs=decision.epochs,
        fine_tune_epochs=decision.fine_tune_epochs if fine_tuned else 0,
        gradual=use_gradual,
        augment=decision.augment,
        profile=profile,
        similarity=similarity,
        reasons=tuple(reasons),
        race=small and bool(fine_tuned),
        augment_views=AUGMENT_VIEWS if small else 0,
    )


@dataclass(frozen=True)
class _Decision:
    """What one quadrant decides (see :func:`plan_freeze`)."""

    fine_tuned: list[str]
    reason: str
    epochs: int
    fine_tune_epochs: int
    augment: str = "none"
    cut: str | None = None
    dropped: tuple[str, ...] = ()
    span: float = 1.0
    allows_gradual: bool = True


def _similarity_reason(similarity: Similarity) -> str:
    """The sentence of the explanation that reports the similarity."""
    similar = similarity.similar
    if similarity.declared:
        return f"similarity declared {'similar' if similar else 'different'} by you (not measured)."
    if similarity.shift is None:
        return (f"similarity {similarity.score:.2f} ({similarity.method}): "
                f"{'similar' if similar else 'different'}.")
    shallow = (f"; low-level shift {similarity.shift_shallow:.2f}"
               if similarity.shift_shallow is not None else "")
    return (f"similarity {similarity.score:.2f} (deep-layer activation shift "
            f"{similarity.shift:.2f} ImageNet std{shallow}, {similarity.sample} images): "
            f"{'similar' if similar else 'different'} "
            f"({'at least' if similar else 'under'} {SIMILAR_AT}).")


def _data_notes(profile: DataProfile, image_size: int | None) -> list[str]:
    """Notes on class imbalance and resampling, when they apply."""
    notes = []
    if profile.imbalance >= IMBALANCED_AT and profile.kind == "label":
        notes.append(f"Labels are imbalanced (most/least frequent {profile.imbalance:g}, rarest on "
                     f"{profile.per_class_min} training images): read the per-label F1 and average precision, "
                     "not only the micro F1.")
    elif profile.imbalance >= IMBALANCED_AT and profile.kind == "class":
        notes.append(f"Classes are imbalanced (largest/smallest {profile.imbalance:g}, smallest "
                     f"{profile.per_class_min}): consider class_weight (--class-weight).")
    if profile.resolution and image_size:
        factor = image_size / min(profile.resolution)
        if factor >= 2 or factor <= 0.25:
            height, width = profile.resolution
            notes.append(
                f"The images are a median {height}x{width} px, {'upsampled' if factor > 1 else 'downsampled'} "
                f"x{factor if factor > 1 else 1 / factor:.1f} to {image_size} px: the "
                f"{'blur' if factor > 1 else 'lost detail'} is part of the measured shift."
            )
    return notes


#: How the small-data plans explain the race.
_RACE = ("in a race: stage 2 is discarded if it ends behind the frozen head on the validation images (the "
         "paired difference and its standard error are reported).")


def _small_similar(groups, profile, similarity, *, stage2_rate, epochs, fine_tune_epochs, backbone) -> _Decision:
    """Small and similar: a linear head, then the top third fine-tuned, discarded if it loses the race."""
    names = [g.name for g in groups]
    share = max(1, math.ceil(SIMILAR_SHARE * len(groups)))
    count = min(share, _affordable(groups, profile.images)) if fine_tune_epochs else 0
    fine_tuned = names[len(names) - count:] if count else []
    if not fine_tuned:
        total = epochs + fine_tune_epochs
        return _Decision([], f"Small and similar: a linear head on the frozen {backbone}; the whole epoch budget "
                         f"({total}) goes to it, with light augmentation over {AUGMENT_VIEWS} cached views.",
                         total, 0, augment="light", allows_gradual=False)
    reason = (f"Small and similar: a linear head on the frozen {backbone}, trained on the cached features of "
              f"{AUGMENT_VIEWS} lightly augmented views of each image; then the top {count} of {len(groups)} "
              f"groups ({fine_tuned[0]} to {fine_tuned[-1]}) are fine-tuned at {stage2_rate:.1e} on the unaugmented "
              f"images, {_RACE}")
    return _Decision(fine_tuned, reason, epochs, fine_tune_epochs, augment="light", allows_gradual=False)


def _small_different(groups, profile, similarity, *, stage2_rate, epochs, fine_tune_epochs,
                     backbone) -> _Decision:
    """Small and different: cut only on clear probe evidence; head; groups fine-tuned in a race."""
    names = [g.name for g in groups]
    index, why = _best_cut(groups, similarity, profile.per_class_min)
    cut, dropped, kept = names[index], tuple(names[index + 1:]), groups[: index + 1]
    cut = cut if dropped else None
    count = min(len(kept) - 1, _affordable(kept, profile.images)) if fine_tune_epochs else 0  # never the stem
    fine_tuned = [g.name for g in kept[len(kept) - count:]] if count > 0 else []
    span, span_reason = discriminative_span(similarity)
    rates = (f" with discriminative rates from {stage2_rate * span:.1e} to {stage2_rate:.1e} ({span_reason})"
             if span < 1 else f" at {stage2_rate:.1e}")
    reason = (f"Small and different: {why}; "
              + (f"the backbone is cut after {cut} and {len(dropped)} group(s) above it are dropped; "
                 if dropped else "")
              + f"a linear head trains on the cached features of {AUGMENT_VIEWS} strongly augmented views of "
              "each image"
              + (f"; then {count} of the {len(kept)} kept groups ({fine_tuned[0]} to {fine_tuned[-1]}) are "
                 f"fine-tuned{rates} on the unaugmented images, {_RACE}"
                 if fine_tuned else f", for the whole epoch budget ({epochs + fine_tune_epochs})."))
    if not fine_tuned:
        epochs, fine_tune_epochs = epochs + fine_tune_epochs, 0
    return _Decision(fine_tuned, reason, epochs, fine_tune_epochs, augment="strong", cut=cut, dropped=dropped,
                     span=span if fine_tuned else 1.0, allows_gradual=False)


def _large_similar(groups, profile, similarity, *, stage2_rate, epochs, fine_tune_epochs, backbone) -> _Decision:
    """Large and similar: the top third of the groups fine-tuned."""
    names = [g.name for g in groups]
    share = max(1, math.ceil(SIMILAR_SHARE * len(groups)))
    count = min(share, _affordable(groups, profile.images))
    fine_tuned = names[len(names) - count:]
    reason = (f"Large and similar: the lower groups' ImageNet features already fit, so the top "
              f"{count} of {len(groups)} groups ({fine_tuned[0]} to {fine_tuned[-1]}) are fine-tuned "
              f"at {stage2_rate:.1e}, BatchNorm kept in inference mode"
              + (f" (capped by {PARAMS_PER_IMAGE:,} parameters per image)." if count < share else "."))
    return _Decision(fine_tuned, reason, epochs, fine_tune_epochs)


def _large_different(groups, profile, similarity, *, stage2_rate, epochs, fine_tune_epochs,
                     backbone) -> _Decision:
    """Large and different: every group but the stem, discriminative rates over the measured span."""
    names = [g.name for g in groups]
    span, span_reason = discriminative_span(similarity)
    count = min(len(groups) - 1, _affordable(groups, profile.images))
    fine_tuned = names[len(names) - count:]
    reason = (f"Large and different: the top groups' ImageNet-specific features need to move, so "
              f"{count} of {len(groups)} groups ({fine_tuned[0]} to {fine_tuned[-1]}) are fine-tuned, "
              f"only the stem stays frozen"
              + (f" (capped by {PARAMS_PER_IMAGE:,} parameters per image)" if count < len(groups) - 1 else "")
              + (f"; discriminative rates from {stage2_rate * span:.1e} ({fine_tuned[0]}) to "
                 f"{stage2_rate:.1e} ({fine_tuned[-1]}), a span of {span:.2f}: {span_reason}."
                 if span < 1 else
                 f"; every group at {stage2_rate:.1e} (a discriminative span of 1.00: {span_reason})."))
    return _Decision(fine_tuned, reason, epochs, fine_tune_epochs, span=span)


def plan_opaque(
    profile: DataProfile,
    similarity: Similarity,
    group: GroupInfo,
    *,
    learning_rate: float = 3e-3,
    epochs: int = 10,
    fine_tune_epochs: int = 15,
    backbone: str = "the backbone",
) -> FreezePlan:
    """Plan for a backbone that is one opaque group (a TF-Hub SavedModel).

    Nothing inside it can be cut, measured per layer or given its own rate:
    it is frozen whole or fine-tuned whole. Small data (either similarity)
    freezes it and trains the head: small+different would use earlier
    layers, which an opaque model does not expose. Large data fine-tunes the
    whole backbone at a tenth of the head's rate.

    Args:
        profile: Size of the training data.
        similarity: Declared similarity, or an unmeasured one.
        group: The backbone as one group (its parameter count).
        learning_rate: Stage 1 learning rate.
        epochs: Stage 1 epochs.
        fine_tune_epochs: Stage 2 epochs.
        backbone: Name used in the explanation.

    Returns:
        The :class:`FreezePlan` (group ``group.name``).
    """
    small, size_reason = size_verdict(profile, group.params)
    similar = similarity.similar
    sim_reason = (f"similarity declared {'similar' if similar else 'different'} by you (not measured)."
                  if similarity.declared else f"similarity {similarity.score:.2f} ({similarity.method}): "
                  f"{'similar' if similar else 'different'}.")
    quadrant = f"{'small' if small else 'large'}+{'similar' if similar else 'different'}"
    opaque = (f"{backbone} is one opaque group ({group.params:,} parameters): it is frozen or fine-tuned "
              "as a whole; it cannot be cut, measured per layer, or given discriminative rates.")
    reasons = [size_reason, sim_reason, opaque]
    rate = learning_rate / 10
    if small:
        fine_tuned: tuple[str, ...] = ()
        epochs, fine_tune_epochs = epochs + fine_tune_epochs, 0
        reasons.append("Small data: the backbone stays frozen and a linear head trains on its cached "
                       f"features for the whole budget ({epochs} epochs)"
                       + ("; with a registry backbone the planner would cut to earlier layers instead."
                          if not similar else "."))
    else:
        fine_tuned = (group.name,)
        reasons.append(f"Large data: a linear head on the frozen features, then the whole backbone is "
                       f"fine-tuned at {rate:.1e} (through tf_keras, BatchNorm statistics kept).")
    return FreezePlan(
        quadrant=quadrant,
        frozen=() if fine_tuned else (group.name,),
        fine_tuned=fine_tuned,
        dropped=(),
        cut=None,
        head=dict(LINEAR_HEAD),
        learning_rate=learning_rate,
        group_learning_rates={name: rate for name in fine_tuned},
        span=1.0,
        epochs=epochs,
        fine_tune_epochs=fine_tune_epochs if fine_tuned else 0,
        gradual=False,
        augment="none",
        profile=profile,
        similarity=similarity,
        reasons=tuple(reasons),
    )


def override_plan(plan: FreezePlan, groups: Sequence[str], *, unfreeze: int | None = None, cut: str | None = None,
                  fine_tune_learning_rate: float | None = None, augment: str | None = None,
                  gradual: bool | None = None, head: dict[str, Any] | None = None,
                  budget: tuple[int, int] | None = None, span: float | None = None) -> FreezePlan:
    """Apply explicit settings on top of a plan and record each one that differs.

    Args:
        plan: The planner's plan.
        groups: All backbone group names, input to output.
        unfreeze: Groups to fine-tune, counted from the top of the kept backbone.
        cut: Last kept group (the last group's name keeps them all).
        fine_tune_learning_rate: Peak stage-2 rate of the top group.
        augment: ``"none"``, ``"light"``, ``"strong"`` or ``"custom"``.
        gradual: Unfreeze one group at a time.
        head: The head's settings.
        budget: The recipe's ``(epochs, fine_tune_epochs)``, used when an
            override brings back a stage 2 the plan had given to stage 1.
        span: Lowest fine-tuned group's rate over the top group's (1: one rate).

    Returns:
        The plan as it will run, ``overrides`` holding ``{"plan": ..., "used": ...}`` per changed decision.

    Raises:
        ValueError: For an unknown group name or an ``unfreeze`` larger than
            the kept groups.
    """
    names = list(groups)
    overrides = dict(plan.overrides)
    changes: dict[str, Any] = {}

    def record(name: str, planned: Any, used: Any) -> None:
        if used != planned:
            overrides[name] = {"plan": planned, "used": used}

    kept = names[: len(names) - len(plan.dropped)]
    if cut is not None:
        if cut not in names:
            raise ValueError(f"cut must be one of the backbone's groups ({', '.join(names)}), got {cut!r}.")
        kept = names[: names.index(cut) + 1]
        new_cut = None if cut == names[-1] else cut
        record("cut", plan.cut, new_cut)
        changes.update(cut=new_cut, dropped=tuple(names[len(kept):]))
    fine_tuned = [g for g in plan.fine_tuned if g in kept]
    if unfreeze is not None:
        if not 0 <= unfreeze <= len(kept):
            raise ValueError(f"unfreeze must be between 0 and {len(kept)} (the kept groups), got {unfreeze}.")
        fine_tuned = kept[len(kept) - unfreeze:] if unfreeze else []
        record("unfreeze", plan.unfreeze, unfreeze)
    top_rate = max(plan.group_learning_rates.values(), default=plan.learning_rate / 10)
    if fine_tune_learning_rate is not None:
        record("fine_tune_learning_rate", top_rate, fine_tune_learning_rate)
        top_rate = fine_tune_learning_rate
    if span is not None:
        record("discriminative_span", plan.span, span)
    span = plan.span if span is None else span
    changes.update(fine_tuned=tuple(fine_tuned), group_learning_rates=discriminative_rates(fine_tuned, top_rate, span),
                   frozen=tuple(g for g in kept if g not in fine_tuned), span=span)
    if fine_tuned and not plan.fine_tune_epochs and unfreeze:
        # The plan gave stage 2's budget to stage 1; hand it back.
        stage2 = budget[1] if budget else max(1, plan.epochs // 2)
        changes.update(fine_tune_epochs=stage2, epochs=max(1, plan.epochs - stage2))
    elif not fine_tuned:  # no stage 2: the head gets its budget
        changes.update(fine_tune_epochs=0, epochs=plan.epochs + plan.fine_tune_epochs)
    if augment is not None:
        record("augment", plan.augment, augment)
        changes.update(augment=augment, **({"augment_views": 0} if augment == "none" else {}))
    changes["race"] = plan.race and bool(fine_tuned)
    if head is not None:
        record("head", plan.head, head)
        changes["head"] = dict(head)
    if gradual is not None:
        record("gradual", plan.gradual, gradual)
        changes["gradual"] = gradual and bool(fine_tuned)
    return replace(plan, overrides=overrides, **changes)


def fixed_plan(
    profile: DataProfile,
    groups: Sequence[str],
    *,
    unfreeze: int,
    cut: str | None = None,
    learning_rate: float = 3e-3,
    top_rate: float | None = None,
    epochs: int = 10,
    fine_tune_epochs: int = 15,
    augment: str = "none",
    gradual: bool = False,
) -> FreezePlan:
    """The plan of a recipe run with the planner off: exactly what the recipe says.

    Args:
        profile: The data profile (recorded, not used).
        groups: Backbone group names, input to output.
        unfreeze: Groups fine-tuned, from the top of the kept backbone.
        cut: Last kept group, or ``None`` for all.
        learning_rate: Stage 1 rate.
        top_rate: Stage 2 rate of every fine-tuned group; defaults to a
            tenth of ``learning_rate``.
        epochs: Stage 1 epochs.
        fine_tune_epochs: Stage 2 epochs.
        augment: Augmentation name.
        gradual: Unfreeze one group at a time.

    Returns:
        The plan, quadrant ``"off"``.

    Raises:
        ValueError: For an unknown ``cut`` or too large an ``unfreeze``.
    """
    names = list(groups)
    if cut is not None and cut not in names:
        raise ValueError(f"cut must be one of the backbone's groups ({', '.join(names)}), got {cut!r}.")
    kept = names[: names.index(cut) + 1] if cut else names
    if not 0 <= unfreeze <= len(kept):
        raise ValueError(f"unfreeze must be between 0 and {len(kept)} (the kept groups), got {unfreeze}.")
    fine_tuned = kept[len(kept) - unfreeze:] if unfreeze else []
    rate = top_rate or learning_rate / 10
    return FreezePlan(
        quadrant="off",
        frozen=tuple(g for g in kept if g not in fine_tuned),
        fine_tuned=tuple(fine_tuned),
        dropped=tuple(names[len(kept):]),
        cut=cut if cut != names[-1] else None,
        head=dict(LINEAR_HEAD),
        learning_rate=learning_rate,
        group_learning_rates={g: rate for g in fine_tuned},
        span=1.0,
        epochs=epochs,
        fine_tune_epochs=fine_tune_epochs if fine_tuned else 0,
        gradual=gradual and bool(fine_tuned),
        augment=augment,
        profile=profile,
        similarity=None,
        reasons=(f"Planner off: the recipe's settings as written ({len(fine_tuned)} of {len(names)} "
                 f"groups fine-tuned at {rate:.1e}).",),
    )
