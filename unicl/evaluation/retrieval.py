"""Image-text retrieval: recall@k both ways over a caption file, an image with several captions counted once."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unicl._checks import check_instance
from unicl.data.datasets import CaptionPairs
from unicl.evaluation.inference import DEFAULT_INFERENCE, InferenceOptions
from unicl.evaluation.names import RECALL_AT
from unicl.models.model import UniCLModel
from unicl.text.tokenizer import Tokenizer


@torch.no_grad()
def retrieval_recall(
    model: UniCLModel,
    captions: CaptionPairs,
    tokenizer: Tokenizer,
    *,
    inference: InferenceOptions = DEFAULT_INFERENCE,
) -> dict[str, float]:
    """Image→text and text→image recall@1/5/10 over a caption file.

    An image query is a hit at ``k`` when ANY of its captions ranks in its top ``k`` captions (clip_benchmark's
    rule for several captions per image); a caption query when its image ranks in its top ``k`` images. An image
    listed on several rows is one query (`unicl.data.datasets.CaptionPairs.images`).

    Args:
        model: the model (moved to ``inference.device``, put in eval mode).
        captions: the caption rows, with their `transform` set: ``I`` distinct images and ``T`` captions.
        tokenizer: the model's tokenizer.
        inference: batch size (of images and of captions), workers, device, precision and progress bar
            (`unicl.evaluation.inference.InferenceOptions`).

    Returns:
        ``{"image_to_text_R@1": ..., ..., "text_to_image_R@10": ..., "images": I, "captions": T}``.

    Raises:
        TypeError: ``inference`` that is not an `unicl.evaluation.inference.InferenceOptions`.
    """
    inference = check_instance("inference", inference, InferenceOptions)
    device, batch_size = inference.torch_device, inference.batch_size
    model = model.to(device).eval()
    image_features = []
    for images in inference.batches(captions.images, "images"):
        with inference.autocast():
            image_features.append(F.normalize(model.encode_image(images.to(device)).float(), dim=-1))
    text_features = []
    for start in range(0, len(captions.captions), batch_size):
        batch = tokenizer(captions.captions[start : start + batch_size])
        with inference.autocast():
            encoded = model.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        text_features.append(F.normalize(encoded.float(), dim=-1))
    similarity = (torch.cat(image_features) @ torch.cat(text_features).T).cpu()  # [images, captions]
    owner = torch.tensor(captions.image_index)
    matches = owner[None, :] == torch.arange(similarity.shape[0])[:, None]  # caption j describes image i
    results: dict[str, float] = {}
    for k in RECALL_AT:
        top_captions = similarity.topk(min(k, similarity.shape[1]), dim=1).indices
        results[f"image_to_text_R@{k}"] = float(matches.gather(1, top_captions).any(dim=1).double().mean())
        top_images = similarity.T.topk(min(k, similarity.shape[0]), dim=1).indices
        results[f"text_to_image_R@{k}"] = float((top_images == owner[:, None]).any(dim=1).double().mean())
    return {**results, "images": similarity.shape[0], "captions": similarity.shape[1]}
