"""The official evaluation transform and training augmentation of the released models."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

import unicl
from unicl.models.image import ImageConfig


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def test_evaluation_transform_is_resize_256_over_224_center_crop_and_imagenet_normalisation():
    image = _photo(400, 300)
    got = unicl.image_transform("unicl_swin_tiny")(image)
    # Written out by hand: shorter side to 256 (bicubic), center 224 crop, [0, 1], ImageNet mean and std.
    resized = TF.resize(image, 256, interpolation=TF.InterpolationMode.BICUBIC)
    cropped = TF.center_crop(resized, 224)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    expected = (TF.to_tensor(cropped) - mean) / std
    torch.testing.assert_close(got, expected)
    assert TF.get_image_size(resized) == [341, 256]


def test_every_way_of_naming_the_model_gives_the_same_transform():
    image = _photo(250, 260, seed=1)
    model = unicl.create_model("unicl_tiny")
    by_name = unicl.image_transform("unicl_tiny")(image)
    for source in (model, model.config, model.config.image):
        torch.testing.assert_close(unicl.image_transform(source)(image), by_name)


def test_small_images_are_not_resized_and_train_with_a_padded_crop():
    image = _photo(32, 32, seed=2)
    assert unicl.image_transform("unicl_tiny")(image).shape == (3, 32, 32)
    torch.manual_seed(0)
    augmented = unicl.image_transform("unicl_tiny", train=True)(image)
    assert augmented.shape == (3, 32, 32)


def test_training_augmentation_is_random_and_sized():
    transform = unicl.image_transform("unicl_swin_tiny", train=True)
    image = _photo(500, 375, seed=3)
    torch.manual_seed(0)
    first = transform(image)
    second = transform(image)
    assert first.shape == second.shape == (3, 224, 224)
    assert not torch.equal(first, second)


def test_bad_sources_are_refused():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        unicl.image_transform("nope")
    with pytest.raises(TypeError, match="must be a preset name, a UniCLModel"):
        unicl.image_transform(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="takes 1 channels"):
        unicl.image_transform(ImageConfig("resnet18", image_size=64, in_chans=1))


@pytest.mark.parametrize("size", [32, 224])
def test_randaugment_posterize_at_its_top_magnitude_gives_black_instead_of_failing(size):
    augmentation = unicl.image_transform(unicl.models.ImageConfig("resnet50", image_size=size), train=True)
    operations = [op for step in augmentation.transforms for op in getattr(step, "ops", []) if "Posterize" in op.name]
    assert operations  # the official RandAugment has a posterize operation
    for operation in operations:
        operation.magnitude, operation.magnitude_std, operation.prob = 10, 0, 1.0  # timm asks for 0 bits here
        image = operation(_photo(40, 40))
        assert image.size == (40, 40) and image.getextrema() == ((0, 0), (0, 0), (0, 0))


def test_posterize_keeps_the_most_significant_bits():
    photo = _photo(16, 16, seed=3)
    assert unicl.transforms.posterize(photo, 8) is photo
    kept = torch.as_tensor(list(unicl.transforms.posterize(photo, 2).getdata()))
    assert torch.equal(kept, torch.as_tensor(list(photo.getdata())) & 0b11000000)
