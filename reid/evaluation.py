"""The ``reid`` evaluator: rank the gallery for every query by the model's embeddings.

The query set is the run's test split (``ctx.test_split``, the budget's ``test_subset`` of
the queries), the gallery is ``ctx.data.extra_splits["gallery"]`` (always whole). Features
come from ``model.embed(x)`` in eval mode; distances are Euclidean on the raw features
(torchreid's default). Metrics are percent, like top-1 elsewhere; the record also keeps
the input size and the query/gallery counts they were measured on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kdbench.benchmarks.data import BatchLoader, ImageSplit
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.evaluators import Evaluation
from kdbench.benchmarks.method import RunContext
from kdbench.benchmarks.registry import EVALUATORS
from kdbench.reid.metrics import eval_market1501

RANKS = (1, 5, 10)
MAX_RANK = 50


def embedding_fn(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model.embed``; a clear error for a model without one."""
    embed = getattr(model, "embed", None)
    if not callable(embed):
        raise ConfigError(
            f"ReID evaluation needs model.embed(x) -> [N, D] features (the network without its "
            f"identity classifier); {type(model).__name__} has no embed() method")
    return embed


@torch.inference_mode()
def embeddings(model: nn.Module, loader: BatchLoader) -> torch.Tensor:
    """Features [N, D] (float32, CPU) of every image of the loader; restores the model's mode."""
    embed = embedding_fn(model)
    was_training = model.training
    model.eval()
    try:
        feats = [embed(batch.x).float().flatten(1).cpu() for batch in loader]
    finally:
        model.train(was_training)
    return torch.cat(feats)


def camids(split: ImageSplit, name: str) -> torch.Tensor:
    if "camid" not in split.meta:
        raise ConfigError(f"the {name} split has no camera ids (meta['camid']); the reid "
                          "evaluator needs a ReID dataset such as market1501")
    return split.meta["camid"]


@EVALUATORS.register_module("reid")
def reid(model: nn.Module, ctx: RunContext) -> Evaluation:
    """Rank-1/5/10 and mAP (percent) of ``model`` on query vs gallery."""
    gallery = ctx.data.extra_splits.get("gallery")
    if gallery is None:
        raise ConfigError(f"the reid evaluator needs a gallery split; dataset {ctx.data.name!r} "
                          f"has {', '.join(['train', 'test', *ctx.data.extra_splits])}")
    query = ctx.test_split
    model.to(ctx.device)
    q_feat = embeddings(model, ctx.loader(query, train=False))
    g_feat = embeddings(model, ctx.loader(gallery, train=False))
    scores = eval_market1501(torch.cdist(q_feat, g_feat), query.labels, gallery.labels,
                             camids(query, "query"), camids(gallery, "gallery"), MAX_RANK)
    metrics = {**{f"rank{k}": 100.0 * scores.rank(k) for k in RANKS}, "mAP": 100.0 * scores.mAP}
    details = {"input_size": list(ctx.data.input_shape[1:]), "queries": len(query),
               "valid_queries": scores.valid_queries, "gallery": len(gallery),
               "distance": "euclidean", "max_rank": MAX_RANK}
    return Evaluation(metrics, details)
