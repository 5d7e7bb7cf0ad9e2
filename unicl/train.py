"""Train a UniCL model: ``python -m unicl.train --help`` (or the ``unicl-train`` command) lists every option.

The run itself is `unicl.training.trainer`; its options are `unicl.training.options`.
"""

from unicl.training.trainer import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
