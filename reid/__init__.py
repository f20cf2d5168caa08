"""Person re-identification: Market-1501 / DukeMTMC-reID, CMC/mAP, ReID models, KDAS search space.

Importing this package registers the ``market1501`` and ``dukemtmc_reid`` datasets, the
``reid`` evaluator and the ``resnet*_reid`` models (the harness imports it lazily through the
registries' locations). Modules: ``layout`` (on-disk scheme), ``fixtures`` (writer of
generated sets in that scheme), ``datasets`` (loader), ``metrics`` (torchreid's CMC/mAP),
``evaluation`` (the evaluator), ``models`` (zoo entries), ``nas`` (KDAS-ReID's search space,
supernet and derived networks; used by ``methods/kdas_reid.py``).

A ReID model exposes ``embed(x)`` (retrieval features, what is deployed and measured) and
``forward(x)`` (identity logits, what training and KD use).
"""

from kdbench.reid import datasets, evaluation, models

__all__ = ["datasets", "evaluation", "models"]
