"""The evaluation report of a trained classifier: predictions, robustness, calibration, OOD detection, embeddings.

All functions put the model in eval mode for their duration and restore its
mode afterwards. Attacks run on the full pipeline: inputs are mapped back to
pixel space with the data set's normalisation (``Splits.mean``/``std``),
perturbed there, and normalised again inside the attacked function.

The trainer's own accuracy/loss evaluation is
:func:`multimix.engine.evaluate.evaluate`; this module adds the wider suite
on top of its eval-mode and batching helpers.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch.utils.data import Dataset, Subset

from ..contract import eval_mode
from . import attacks
from .calibration import expected_calibration_error
from .geometry import alignment, class_distance_ratio, uniformity
from ..data import batches
from .ood import auroc, energy_score, fpr_at_tpr, msp_score

__all__ = ["predict", "default_epsilon", "robustness", "ood_detection", "embedding_metrics", "inapplicable", "report"]

ATTACKS = "FGSM and PGD attacks"
DEFAULT_OOD = "OOD detection on shuffled positions"


def _first(dataset: Dataset, limit: Optional[int]) -> Dataset:
    return dataset if limit is None or limit >= len(dataset) else Subset(dataset, range(limit))


@torch.no_grad()
def predict(model, dataset: Dataset, *, batch_size: int = 512, device="cpu", limit: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Logits (N, c), pooled embeddings (N, d) and labels (N,) of the first ``limit`` examples."""
    logits, embeddings, labels = [], [], []
    with eval_mode(model):
        for x, y in batches(_first(dataset, limit), batch_size, device):
            z = model.pool(model.encode(x))
            embeddings.append(z.float().cpu())
            logits.append(model.head(z).float().cpu())
            labels.append(y.cpu())
    return {"logits": torch.cat(logits), "embeddings": torch.cat(embeddings), "labels": torch.cat(labels)}


def default_epsilon(splits, dataset: Optional[Dataset] = None) -> float:
    """The L∞ budget of the attacks: 8/255 of the input's dynamic range.

    For images in pixel space that is the usual 8/255. For inputs without a
    pixel range (MNIST-1D is standardised) the range is taken as the span
    between the 1st and 99th percentiles of the test inputs, so ε is the same
    share of the signal's amplitude.
    """
    if splits.mean is not None:
        return 8 / 255
    x = torch.stack([(dataset or splits.test)[i][0] for i in range(min(len(dataset or splits.test), 2000))])
    low, high = torch.quantile(x.flatten().float(), torch.tensor([0.01, 0.99])).tolist()
    return 8 / 255 * (high - low)


def robustness(model, splits, *, eps: Optional[float] = None, pgd_steps: int = 10, pgd_step_size: Optional[float] = None,
               limit: Optional[int] = 2000, batch_size: int = 256, device="cpu", seed: int = 0) -> Dict[str, float]:
    """Top-1 error (%) without attack, under FGSM and under PGD-``pgd_steps`` on the first ``limit`` test examples."""
    eps = default_epsilon(splits) if eps is None else eps
    step = eps / 4 if pgd_step_size is None else pgd_step_size
    if splits.mean is not None:
        normalize = attacks.Normalize(splits.mean, splits.std).to(device)
        to_pixels, clamp = normalize.inverse, (0.0, 1.0)
    else:
        normalize, to_pixels, clamp = None, (lambda x: x), None
    pixel_batches = [(to_pixels(x), y) for x, y in batches(_first(splits.test, limit), batch_size, device)]
    generator = torch.Generator(device=device).manual_seed(seed)
    with eval_mode(model), torch.no_grad():
        wrong = sum((model(x if normalize is None else normalize(x)).argmax(1) != y).sum().item() for x, y in pixel_batches)
    clean = 100.0 * wrong / sum(len(y) for _, y in pixel_batches)
    with eval_mode(model):
        fgsm = attacks.error_under_attack(model, pixel_batches, attacks.fgsm, eps=eps, normalize=normalize, clamp=clamp)
        pgd = attacks.error_under_attack(model, pixel_batches, attacks.pgd, eps=eps, step_size=step, steps=pgd_steps,
                                         normalize=normalize, clamp=clamp, generator=generator)
    return {"eps": eps, "clean_error": clean, "fgsm_error": fgsm, "pgd_error": pgd, "pgd_steps": pgd_steps}


def ood_detection(in_logits: torch.Tensor, out_logits: torch.Tensor) -> Dict[str, float]:
    """AUROC (%) and FPR at 95% TPR (%) of the MSP and energy scores (in-distribution = positive)."""
    result = {}
    for name, score in (("msp", msp_score), ("energy", energy_score)):
        s_in, s_out = score(in_logits), score(out_logits)
        result[f"{name}_auroc"] = 100.0 * auroc(s_in, s_out)
        result[f"{name}_fpr95"] = 100.0 * fpr_at_tpr(s_in, s_out, 0.95)
    return result


def embedding_metrics(embeddings: torch.Tensor, labels: torch.Tensor, *, max_points: int = 4096, seed: int = 0) -> Dict[str, float]:
    """Alignment, uniformity (Wang & Isola, 2020) and intra/inter-class distance ratio of ℓ2-normalised embeddings."""
    # one generator for the three metrics, in this order: each draws its own subset from where the last left off
    g = torch.Generator().manual_seed(seed)
    return {"alignment": alignment(embeddings, labels, max_points=max_points, generator=g),
            "uniformity": uniformity(embeddings, max_points=max_points, generator=g),
            "class_distance_ratio": class_distance_ratio(embeddings, labels, max_points=max_points, generator=g)}


def inapplicable(splits, ood: Optional[Dataset] = None) -> Dict[str, str]:
    """The evaluations of :func:`report` that do not apply to ``splits``' inputs, each with the reason.

    The attacks perturb input values, and node indices (graph data) have none; the default OOD set shuffles
    positions, and table rows and nodes have none (an ``ood`` set given explicitly is always used).
    """
    values = getattr(splits, "input_dtype", torch.float32).is_floating_point
    kind = "table rows" if values else "node-index inputs"
    skipped = {}
    if not values:
        skipped[ATTACKS] = f"{kind} have no values to perturb"
    if ood is None and len(splits.input_shape) < 2:
        skipped[DEFAULT_OOD] = f"{kind} have no positions to shuffle"
    return skipped


def report(model, splits, *, ood: Optional[Dataset] = None, eps: Optional[float] = None, pgd_steps: int = 10,
           attack_limit: Optional[int] = 2000, device="cpu", seed: int = 0) -> Dict[str, Any]:
    """Everything above on the test set; ``ood`` defaults to the test set with shuffled positions.

    Skipped where they do not apply (:func:`inapplicable`): the attacks for inputs that are not values (graph
    node indices), the default OOD set for inputs without positions (table rows, nodes).

    Returns a flat dict of numbers plus ``_predictions`` (test logits,
    embeddings, labels) for plots.
    """
    # imported here: multimix.data pulls in the data-set loaders, which only the default OOD set needs
    from ..data import ShuffledPositions

    test = predict(model, splits.test, device=device)
    probs = torch.softmax(test["logits"], dim=1)
    out: Dict[str, Any] = {
        "accuracy": 100.0 * (test["logits"].argmax(1) == test["labels"]).float().mean().item(),
        "ece": 100.0 * expected_calibration_error(probs, test["labels"], n_bins=15),
    }
    skipped = inapplicable(splits, ood)
    if ATTACKS not in skipped:
        out.update(robustness(model, splits, eps=eps, pgd_steps=pgd_steps, limit=attack_limit, device=device,
                              seed=seed))
    if DEFAULT_OOD not in skipped:
        ood_set = ood if ood is not None else ShuffledPositions(splits.test, seed=seed)
        out.update(ood_detection(test["logits"], predict(model, ood_set, device=device)["logits"]))
    out.update(embedding_metrics(test["embeddings"], test["labels"], seed=seed))
    out["_predictions"] = test
    return out
