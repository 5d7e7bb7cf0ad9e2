"""The names evaluation offers: metrics, feature kinds, probe head starts and the ``--classnames`` sets (the
template sets are `unicl.text.names.TEMPLATE_SETS`).

This module imports nothing, so the evaluation command builds its parser (choices and help) from it without loading
torch, and the suite reader checks its entries with it. The modules that implement the names use these tuples.
"""

from __future__ import annotations

#: The metrics, in the order `unicl.evaluation.metrics.METRICS` holds their functions.
METRIC_NAMES: tuple[str, ...] = ("top1", "top5", "mean_per_class_recall", "map_11_point", "roc_auc")
#: The metric reported for single-label data when none is named.
DEFAULT_METRIC = "top1"
#: The one metric of multi-label data (a labels CSV).
MULTILABEL_METRIC = "map_11_point"
#: The k of the top-k accuracies every single-label result reports (those that do not exceed the classes).
TOP_K: tuple[int, ...] = (1, 5)
#: The k of retrieval's recall@k.
RECALL_AT: tuple[int, ...] = (1, 5, 10)
#: Image features a probe fits. ``"backbone"``: the image tower's pooled output before the projection
#: (``model.image_encoder(images)``, what CLIP's linear probes use); ``"projected"``: the joint embedding
#: ``model.encode_image(images, normalize=False)``.
FEATURE_KINDS: tuple[str, ...] = ("backbone", "projected")
#: Where a probe's head starts. ``"random"``: at zero with plain L2 (the name follows ELEVATER; the start is
#: deterministic); ``"text"``: at, and pulled towards, the zero-shot classifier (L2-SP).
INITS: tuple[str, ...] = ("random", "text")
#: Inference precisions: ``"bf16"`` autocasts on CUDA only; on the CPU it runs in float32.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
#: ``--classnames`` names of the shipped class-name lists: ImageNet-1k's as CLIP curated them, and UniCL's copy;
#: each maps to its `unicl.text.prompts.imagenet_class_names` source.
CLASSNAMES_OPTIONS: dict[str, str] = {"imagenet": "clip", "imagenet-unicl": "unicl"}
