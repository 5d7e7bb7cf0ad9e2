"""Image transforms of the released UniCL models: the evaluation transform they were scored with, and the training
augmentation they were trained with (microsoft/UniCL ``data/build.py`` and ``config.py``, which follow Swin's).

* evaluation: resize the shorter side to ``⌊256/224 · S⌋`` with bicubic interpolation, center-crop ``S × S``,
  ``ToTensor``, ImageNet mean and std (``S`` the model's image size);
* training: timm's ImageNet training transform (random resized crop with bicubic interpolation, horizontal flip,
  RandAugment ``rand-m9-mstd0.5-inc1``, color jitter 0.4, random erasing with probability 0.25 in ``pixel`` mode);
* images of 32 pixels or less are not resized, and train with `small_image_augmentation` alone: a random shift of at
  most 1/16 of the side (the official code keeps the ImageNet augmentation after a padded crop; the Training page
  says why unicl does not).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image, ImageOps
from timm.data import create_transform
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms

from unicl.models.adapters import AdapterModel
from unicl.models.image import ImageConfig
from unicl.models.model import UniCLConfig, UniCLModel
from unicl.models.presets import get_config

#: Evaluation resize over crop, as the official code keeps ImageNet's 256 → 224 ratio at every size.
RESIZE_RATIO = 256 / 224
#: The official training augmentation (config.py: AUG.*).
TRAIN_AUGMENTATION: dict[str, Any] = {
    "color_jitter": 0.4,
    "auto_augment": "rand-m9-mstd0.5-inc1",
    "re_prob": 0.25,
    "re_mode": "pixel",
    "re_count": 1,
}
#: Images this small are used at their size, without resizing, and train with `small_image_augmentation`.
SMALL_IMAGE = 32
#: The largest shift of `small_image_augmentation`, as a fraction of the image side (2 pixels at 32).
SMALL_IMAGE_SHIFT = 1 / 16


def image_transform(name_or_model: str | UniCLModel | UniCLConfig | ImageConfig, train: bool = False) -> Callable:
    """The transform from a PIL image to the ``[3, S, S]`` tensor a model takes.

    Args:
        name_or_model: a preset name (``"unicl_swin_tiny"``), a model, or its (image) configuration. An adapter
            model (`unicl.models.adapters`) gives its own library's transforms.
        train: the training augmentation instead of the evaluation transform.

    Returns:
        A callable on PIL images.

    Raises:
        ValueError: an unknown preset, or an image tower that does not take 3-channel images.
        TypeError: anything else as ``name_or_model``.

    Examples:
        >>> from PIL import Image
        >>> transform = image_transform("unicl_swin_tiny")
        >>> transform(Image.new("RGB", (320, 240))).shape
        torch.Size([3, 224, 224])
    """
    if isinstance(name_or_model, AdapterModel):
        # An open_clip or transformers model is read with its own library's transforms.
        return name_or_model.image_transform(train)
    config = _image_config(name_or_model)
    if config.in_chans != 3:
        raise ValueError(f"image_transform makes RGB tensors; this image tower takes {config.in_chans} channels")
    size = config.image_size
    if train and size <= SMALL_IMAGE:
        return small_image_augmentation(size)
    if train:
        augmentation: Any = create_transform(
            input_size=size, is_training=True, interpolation="bicubic", **TRAIN_AUGMENTATION
        )
        _allow_zero_bit_posterize(augmentation)
        return augmentation
    steps: list[Callable] = []
    if size > SMALL_IMAGE:
        steps += [
            transforms.Resize(int(RESIZE_RATIO * size), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
        ]
    steps += [transforms.ToTensor(), transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]
    return transforms.Compose(steps)


def small_image_augmentation(size: int) -> transforms.Compose:
    """The training augmentation of images of `SMALL_IMAGE` pixels or less: a random crop of the image padded with
    ``max(1, ⌊size / 16⌋)`` black pixels on every side (a shift of up to 2 pixels at 32), then ``ToTensor`` and
    ImageNet's mean and std as in evaluation. Nothing else: no flips, RandAugment or random erasing (the Training
    page says why).

    Args:
        size: the side of the square images, at most `SMALL_IMAGE`.

    Returns:
        A callable from a ``size × size`` PIL image to a ``[3, size, size]`` tensor.

    Raises:
        ValueError: ``size`` outside ``[1, SMALL_IMAGE]``.
    """
    if not 1 <= size <= SMALL_IMAGE:
        raise ValueError(f"small_image_augmentation takes sizes in [1, {SMALL_IMAGE}]; got {size}")
    padding = max(1, int(size * SMALL_IMAGE_SHIFT))
    return transforms.Compose(
        [
            transforms.RandomCrop(size, padding=padding),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        ]
    )


def posterize(image: Image.Image, bits: int, **_: Any) -> Image.Image:
    """Keep the ``bits`` most significant bits of each channel; 0 bits gives a black image.

    timm's RandAugment asks for 0 bits at its top magnitude (``PosterizeIncreasing`` at level 10, drawn now and then
    by the official ``rand-m9-mstd0.5-inc1``), which ``ImageOps.posterize`` refuses with ``ValueError`` from Pillow
    13 on.

    Args:
        image: the PIL image.
        bits: how many bits of each channel to keep; 8 or more returns ``image`` itself, 0 or fewer a black image
            of its mode and size.

    Returns:
        The posterized image.
    """
    if bits >= 8:
        return image
    if bits <= 0:
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits)


def _allow_zero_bit_posterize(augmentation: Any) -> None:
    """Give this transform's RandAugment posterize operations `posterize` (this instance only)."""
    for step in getattr(augmentation, "transforms", []):
        for operation in getattr(step, "ops", []):
            if "Posterize" in getattr(operation, "name", ""):
                operation.aug_fn = posterize


def _image_config(source: object) -> ImageConfig:
    if isinstance(source, str):
        return get_config(source).image
    if isinstance(source, UniCLModel):
        return source.config.image
    if isinstance(source, UniCLConfig):
        return source.image
    if isinstance(source, ImageConfig):
        return source
    raise TypeError(
        "name_or_model must be a preset name, a UniCLModel, a UniCLConfig or an ImageConfig; "
        f"got {type(source).__name__}"
    )
