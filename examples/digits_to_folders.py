"""Write scikit-learn's handwritten digits (1,797 real 8x8 scans shipped with it, no download) as ImageFolders.

Each scan is upscaled (nearest neighbour) to a 32-pixel RGB PNG, the size of the ``unicl_tiny`` preset, and the
digits are split 75/25 per class into ``ROOT/train`` and ``ROOT/eval``, one folder per class named ``zero`` ..
``nine``: image-label data for the training command, with held-out images for its zero-shot evaluation.

    python examples/digits_to_folders.py data/digits
    unicl-train --model unicl_tiny --image-folder data/digits/train --eval-folder data/digits/eval \\
        --batch-size 64 --steps 400 --output runs/digits
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
#: The side of the written images: the unicl_tiny preset's image size.
SIZE = 32


def write_digits(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write the train and held-out ImageFolders under ``root``; returns their paths.

    Raises:
        FileExistsError: ``root`` already holds images (so two writes never mix splits).
    """
    if (root / "train").exists() or (root / "eval").exists():
        raise FileExistsError(f"{root} already holds train/ or eval/; choose an empty directory")
    digits = load_digits()
    train, held_out = train_test_split(
        range(len(digits.target)), test_size=0.25, random_state=seed, stratify=digits.target
    )
    for split, indices in (("train", train), ("eval", held_out)):
        for index in indices:
            folder = root / split / NAMES[digits.target[index]]
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[index] * 255 / 16).astype("uint8")
            Image.fromarray(pixels).resize((SIZE, SIZE), Image.NEAREST).convert("RGB").save(folder / f"{index}.png")
    return root / "train", root / "eval"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="where train/ and eval/ go")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 75/25 split (default: 0)")
    args = parser.parse_args(argv)
    try:
        train, held_out = write_digits(args.root, args.seed)
    except FileExistsError as error:
        parser.error(str(error))
    print(
        f"wrote {sum(1 for _ in train.rglob('*.png'))} training and {sum(1 for _ in held_out.rglob('*.png'))} "
        f"held-out digits under {args.root}"
    )


if __name__ == "__main__":
    main()
