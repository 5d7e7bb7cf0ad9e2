"""The official evaluation transform and training augmentation of the released models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from timm.data import create_transform
from torchvision import transforms
from torchvision.transforms import functional as TF

import unicl
from unicl.data.transforms import SMALL_IMAGE, TRAIN_AUGMENTATION, small_image_augmentation
from unicl.models.image import ImageConfig

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


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


def test_small_images_are_not_resized_and_train_with_a_padded_crop_alone():
    image = _photo(32, 32, seed=2)
    assert unicl.image_transform("unicl_tiny")(image).shape == (3, 32, 32)
    augmentation = unicl.image_transform("unicl_tiny", train=True)
    # The steps, all of them: no flip, RandAugment, colour jitter or random erasing.
    steps = augmentation.transforms
    assert [type(step) for step in steps] == [transforms.RandomCrop, transforms.ToTensor, transforms.Normalize]
    assert steps[0].size == (32, 32) and steps[0].padding == 2 and steps[0].fill == 0
    assert list(steps[2].mean) == [0.485, 0.456, 0.406] and list(steps[2].std) == [0.229, 0.224, 0.225]
    assert repr(unicl.image_transform(ImageConfig("resnet18", image_size=16), train=True)) == repr(
        small_image_augmentation(16)
    )
    assert small_image_augmentation(8).transforms[0].padding == 1  # at least one pixel
    torch.manual_seed(0)
    assert augmentation(image).shape == (3, 32, 32)


def _shifted_reference(pixels: np.ndarray, top: int, left: int, padding: int) -> np.ndarray:
    """``[H, W, 3]`` uint8 pixels shifted in float64: zero-padded by ``padding``, the window at (top, left) kept,
    scaled to [0, 1] and normalised with ImageNet's mean and std; ``[3, H, W]``."""
    height, width, _ = pixels.shape
    padded = np.zeros((height + 2 * padding, width + 2 * padding, 3))
    padded[padding : padding + height, padding : padding + width] = pixels / 255.0
    window = padded[top : top + height, left : left + width]
    return ((window - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


@given(size=st.integers(2, SMALL_IMAGE), seed=st.integers(0, 2**31 - 1))
def test_small_image_augmentation_only_shifts_the_image_by_at_most_a_sixteenth(size, seed):
    pixels = np.random.default_rng(seed).integers(1, 256, (size, size, 3), dtype=np.uint8)  # no zero: shifts differ
    padding = max(1, size // 16)
    torch.manual_seed(seed)
    got = small_image_augmentation(size)(Image.fromarray(pixels)).double().numpy()
    errors = {
        (top, left): np.abs(got - _shifted_reference(pixels, top, left, padding)).max()
        for top in range(2 * padding + 1)
        for left in range(2 * padding + 1)
    }
    best = min(errors, key=errors.__getitem__)
    assert errors[best] < 1e-6  # float32 rounding of the normalised pixels
    assert sorted(errors.values())[1] > 1e-2  # one shift explains the output, and no other


def test_small_image_augmentation_draws_every_shift():
    pixels = np.random.default_rng(0).integers(1, 256, (32, 32, 3), dtype=np.uint8)
    image, augmentation = Image.fromarray(pixels), small_image_augmentation(32)
    references = {
        (top, left): torch.from_numpy(_shifted_reference(pixels, top, left, 2)).float()
        for top in range(5)
        for left in range(5)
    }
    torch.manual_seed(0)
    seen = set()
    for _ in range(400):  # 25 equally likely shifts: each is missed in 400 draws with probability 1e-7
        out = augmentation(image)
        seen |= {shift for shift, reference in references.items() if torch.allclose(out, reference, atol=1e-5)}
    assert seen == set(references)


def _digits_32px() -> tuple[list[Image.Image], np.ndarray]:
    """scikit-learn's 1,797 digits as 32-px RGB images (each scan pixel a 4x4 block), and their labels."""
    digits = load_digits()
    images = [
        Image.fromarray((scan * 255 / 16).astype("uint8")).resize((32, 32), Image.NEAREST).convert("RGB")
        for scan in digits.images
    ]
    return images, digits.target


@pytest.mark.slow
def test_small_image_augmentation_keeps_digits_recognisable_where_the_imagenet_one_does_not():
    images, labels = _digits_32px()
    train, held_out = train_test_split(np.arange(len(labels)), test_size=0.25, random_state=0, stratify=labels)
    clean = unicl.image_transform("unicl_tiny")

    def pixels(transform, indices) -> np.ndarray:
        return torch.stack([transform(images[index]) for index in indices]).flatten(1).numpy()

    # A nearest neighbour among the clean training digits names an augmented held-out digit right when the
    # augmentation kept what makes it that digit.
    neighbour = KNeighborsClassifier(n_neighbors=1).fit(pixels(clean, train), labels[train])

    def accuracy(transform) -> float:
        torch.manual_seed(0)
        return float((neighbour.predict(pixels(transform, held_out)) == labels[held_out]).mean())

    imagenet = create_transform(input_size=32, is_training=True, interpolation="bicubic", **TRAIN_AUGMENTATION)
    imagenet.transforms[0] = transforms.RandomCrop(32, padding=4)  # what the official code trains 32-px images with
    unicl.data.transforms._allow_zero_bit_posterize(imagenet)
    flipped = transforms.Compose([transforms.RandomHorizontalFlip(p=1.0), clean])
    unaugmented = accuracy(clean)
    assert unaugmented > 0.95
    assert accuracy(unicl.image_transform("unicl_tiny", train=True)) > unaugmented - 0.05
    assert accuracy(imagenet) < 0.5 and accuracy(flipped) < 0.5


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
    for size in (0, SMALL_IMAGE + 1):
        with pytest.raises(ValueError, match=rf"^small_image_augmentation takes sizes in \[1, 32\]; got {size}$"):
            small_image_augmentation(size)


@pytest.mark.parametrize("size", [33, 224])
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
    assert unicl.data.transforms.posterize(photo, 8) is photo
    kept = torch.from_numpy(np.asarray(unicl.data.transforms.posterize(photo, 2)))
    assert torch.equal(kept, torch.from_numpy(np.asarray(photo)) & 0b11000000)
