"""Multinomial logistic regression fitted in torch on the features' device, and the choice of its L2 strength.

The objective, for standardised features ``z = (x - mean) / scale`` (both fitted on the training features only),
weights ``W`` ``[C, F]`` and biases ``b`` ``[C]``::

    mean_i cross_entropy(W z_i + b, y_i) + λ/2 · ‖W - W₀‖²

with ``W₀ = 0`` (plain L2, scikit-learn's ``LogisticRegression(C=1/(λ·N))`` on the same ``z``) or, for a head
started from given weights, ``W₀`` those weights (in ``z``'s coordinates). The biases are not penalised. The
objective is strictly convex, so a start alone would not change the optimum: centring the penalty on the start
(L2-SP, Li et al. 2018) is what lets a zero-shot head act as a prior whose weight ``λ`` the sweep chooses, ``λ → ∞``
keeping the zero-shot classifier and ``λ → 0`` the free fit.

It is minimised full-batch by ``torch.optim.LBFGS`` with a strong-Wolfe line search from the start (zeros, or the
given weights), which needs no learning rate and no randomness: the same inputs on the same device give the same
head. The gradient is computed in closed form (no autograd graph), and the weights are searched in preconditioned
coordinates ``W = V·P`` with ``P = (zᵀz/N + μI)^(-1/2)``, ``μ = max(λ, 1% of the mean eigenvalue)``: the same
optimum, reached in far fewer iterations when features are correlated (a random or collapsed image tower's).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from unicl._checks import check_instance, check_positive_int

#: The coarse sweep: one λ per decade from 1e-6 to 1e2 (refined around the best afterwards, see `choose_l2`).
DEFAULT_L2_GRID: tuple[float, ...] = tuple(10.0**e for e in range(-6, 3))
#: Refinement steps of `choose_l2`, in decades: each tries the best λ times 10^(±step) and keeps the best.
REFINE_STEPS: tuple[float, ...] = (0.5, 0.25, 0.125)
#: The preconditioner's floor, as a share of the standardised features' mean covariance eigenvalue.
PRECONDITION_FLOOR = 0.01


@dataclass
class LogisticHead:
    """A fitted multinomial logistic-regression head.

    Attributes:
        weight: ``[C, F]`` weights on standardised features.
        bias: ``[C]`` biases.
        mean: ``[F]`` the training features' mean.
        scale: ``[F]`` the training features' standard deviation (1 where a feature is constant).
        l2: the penalty ``λ`` it was fitted with.
        loss: the objective at the returned weights (evaluated in float64).
        iterations: L-BFGS iterations run.
        center: ``[C, F]`` the penalty's centre ``W₀`` (zeros unless started from given weights).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    l2: float
    loss: float
    iterations: int
    center: torch.Tensor = field(repr=False)

    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, F]`` features in the head's standardised coordinates ``(x - mean) / scale``."""
        return (features.to(self.mean.device, self.mean.dtype) - self.mean) / self.scale

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, F]`` raw features to ``[N, C]`` logits."""
        return self.standardize(features) @ self.weight.T + self.bias

    __call__ = logits


#: Rows per block of the N x F and N x C passes that need no full-size temporary (a block is about 2^20 numbers).
BLOCK_ELEMENTS = 1 << 20


def _block_rows(width: int) -> int:
    """Rows per block of a ``width``-column pass: ``BLOCK_ELEMENTS // width``, at least one."""
    return max(1, BLOCK_ELEMENTS // max(width, 1))


@dataclass
class StandardizedFeatures:
    """Training features' standardisation and their covariance's eigendecomposition, for fits at several λ.

    The standardised features themselves are never stored: a fit needs only their preconditioned product
    (`preconditioned`), computed block by block from ``features``, so a fit holds one ``[N, F]`` matrix beyond
    the caller's features instead of three.

    Attributes:
        mean: ``[F]`` the features' mean.
        scale: ``[F]`` their standard deviation (1 where a feature is constant).
        features: ``[N, F]`` the features in the fits' dtype (the caller's tensor itself when already in it).
        eigenvalues: ``[F]`` float64 eigenvalues of ``zᵀz / N`` for ``z = (features - mean) / scale`` (clamped at 0).
        eigenvectors: ``[F, F]`` float64, the matching eigenvectors (columns).
    """

    mean: torch.Tensor
    scale: torch.Tensor
    features: torch.Tensor
    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> StandardizedFeatures:
        """Standardise ``[N, F]`` features ``x`` in ``dtype`` on their device (``zᵀz`` summed block by block in
        float64, so no ``[N, F]`` temporary is made)."""
        x = x.to(dtype)
        mean = x.mean(dim=0)
        scale = x.std(dim=0, correction=0)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        covariance = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        step = _block_rows(x.shape[1])
        for start in range(0, len(x), step):
            block = (x[start : start + step] - mean) / scale
            covariance += (block.T @ block).double()
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance / len(x))
        return cls(mean, scale, x, eigenvalues.clamp(min=0), eigenvectors)

    @property
    def z(self) -> torch.Tensor:
        """``[N, F]`` the standardised features ``(features - mean) / scale`` (a new tensor at each access)."""
        return (self.features - self.mean) / self.scale

    def preconditioned(self, precondition: torch.Tensor) -> torch.Tensor:
        """``[N, F]`` ``z @ precondition`` for an ``[F, F]`` matrix, one block of rows at a time (the only
        ``[N, F]`` tensor made is the result)."""
        x = self.features
        result = torch.empty(x.shape[0], precondition.shape[1], dtype=x.dtype, device=x.device)
        step = _block_rows(x.shape[1])
        for start in range(0, len(x), step):
            torch.mm((x[start : start + step] - self.mean) / self.scale, precondition, out=result[start : start + step])
        return result


def _check_problem(x: object, y: object, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point() or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"features must be a non-empty floating-point tensor [N, F]; got {shape}")
    # Block by block: isfinite of the whole matrix makes temporaries larger than the fit's own working set.
    step = _block_rows(x.shape[1])
    if not all(bool(torch.isfinite(x[start : start + step]).all()) for start in range(0, len(x), step)):
        raise ValueError("features must be finite (no NaN or infinity)")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"targets must be integer class ids of shape [{x.shape[0]}] (one per row); got {shape}")
    if bool(((y < 0) | (y >= classes)).any()):
        low, high = int(y.min()), int(y.max())
        raise ValueError(f"targets must be class ids in [0, {classes}); got values from {low} to {high}")
    return x, y.to(x.device).long()


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _check_positive(name: str, value: object) -> float:
    if not _is_number(value) or value <= 0:  # type: ignore[operator]
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _check_l2(l2: object) -> float:
    return _check_positive("l2", l2)


def _check_fraction(fraction: object) -> float:
    if not _is_number(fraction) or not 0 < fraction < 1:  # type: ignore[operator]
        raise ValueError(f"validation_fraction must be a number in (0, 1); got {fraction!r}")
    return float(fraction)  # type: ignore[arg-type]


def _check_steps(name: str, values: object, *, empty: bool) -> tuple[float, ...]:
    """``values`` (a list or tuple of finite numbers ``> 0``; empty only with ``empty``) as a tuple of floats."""
    steps = tuple(values) if isinstance(values, (list, tuple)) else None
    if steps is None or not (steps or empty) or not all(_is_number(v) and v > 0 for v in steps):
        kind = "sequence" if empty else "non-empty sequence"
        raise ValueError(f"{name} must be a {kind} of finite numbers > 0; got {values!r}")
    return tuple(float(v) for v in steps)


@dataclass(frozen=True)
class L2Search:
    """How a probe chooses its L2 strength ``λ`` (`choose_l2`) and fits its final head: the options that
    `unicl.evaluation.protocols.linear_probe` and `unicl.evaluation.protocols.few_shot` share.

    Attributes:
        validation_fraction: the held-out share of each training class for the sweep, in ``(0, 1)``.
        grid: the sweep's coarse λ values, each finite and ``> 0`` (stored as a tuple of floats).
        refine: the sweep's refinement steps in decades, each finite and ``> 0`` (empty: the coarse grid only).
        max_iter: most L-BFGS iterations per fit, ``>= 1``.
        tolerance: the final fit's gradient tolerance (see `fit_logistic_regression`), ``> 0``.
        sweep_tolerance: the sweep's fits' gradient tolerance, ``> 0``: 1e-4 (scikit-learn's ``tol``) by default,
            looser than the final fit's, as the sweep only ranks λ values by their held-out scores.

    Raises:
        ValueError: a field out of range, in one line naming it.
        TypeError: a ``max_iter`` that is not an ``int``.

    Examples:
        >>> L2Search(grid=[1e-2, 1.0], refine=()).grid
        (0.01, 1.0)
        >>> L2Search(max_iter=0)
        Traceback (most recent call last):
        ...
        ValueError: max_iter must be an int >= 1; got 0
    """

    validation_fraction: float = 0.2
    grid: tuple[float, ...] = DEFAULT_L2_GRID
    refine: tuple[float, ...] = REFINE_STEPS
    max_iter: int = 1000
    tolerance: float = 1e-7
    sweep_tolerance: float = 1e-4

    def __post_init__(self) -> None:
        # Frozen: the checked values are set through object.__setattr__, as tuples so that no caller's list can
        # change them afterwards.
        object.__setattr__(self, "validation_fraction", _check_fraction(self.validation_fraction))
        object.__setattr__(self, "grid", _check_steps("grid", self.grid, empty=False))
        object.__setattr__(self, "refine", _check_steps("refine", self.refine, empty=True))
        check_positive_int("max_iter", self.max_iter)
        object.__setattr__(self, "tolerance", _check_positive("tolerance", self.tolerance))
        object.__setattr__(self, "sweep_tolerance", _check_positive("sweep_tolerance", self.sweep_tolerance))


#: The default `L2Search`.
DEFAULT_SEARCH = L2Search()


def fit_logistic_regression(
    x: torch.Tensor,
    y: torch.Tensor,
    l2: float,
    *,
    classes: int,
    init: torch.Tensor | None = None,
    init_bias: torch.Tensor | None = None,
    warm_start: LogisticHead | None = None,
    max_iter: int = 1000,
    tolerance: float = 1e-7,
    tolerance_change: float = 1e-12,
    dtype: torch.dtype = torch.float32,
    history_size: int = 10,
    standardized: StandardizedFeatures | None = None,
) -> LogisticHead:
    """Fit a multinomial logistic-regression head by full-batch L-BFGS (see the module docstring's objective).

    Args:
        x: ``[N, F]`` training features, on the device to fit on.
        y: ``[N]`` class ids in ``[0, classes)``.
        l2: the penalty ``λ > 0`` on ``‖W - W₀‖²/2`` (``λ = 1/(C_sklearn · N)``).
        classes: the number of classes ``C`` (classes absent from ``y`` still get a row).
        init: ``[C, F]`` weights on the raw features to start from and centre the penalty on (e.g. a zero-shot
            head: text embeddings times the logit scale, for unit-norm features); default zeros.
        init_bias: ``[C]`` biases on the raw features that go with ``init`` (default zeros).
        warm_start: a head fitted on the same ``x`` (another ``λ``) to start from instead; it changes where the
            search starts, not the optimum.
        max_iter: most L-BFGS iterations.
        tolerance: stop when no gradient entry exceeds it (or the objective stops changing); 1e-7 reaches the
            float64 optimum to about 1e-6 relative on standardised digits at λ >= 1e-4, 1e-4 at λ = 1e-6.
        tolerance_change: stop when the objective or the step changes by less than it in one iteration.
        dtype: the arithmetic's dtype (float32; float64 for a tighter optimum).
        history_size: L-BFGS's number of stored curvature pairs.
        standardized: ``StandardizedFeatures.of(x, dtype)``, when several fits share ``x`` (computed otherwise).

    Returns:
        The `LogisticHead`.

    Raises:
        ValueError: bad shapes, non-finite features, class ids out of range, or a bad ``l2``/``max_iter``.

    Examples:
        >>> x = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
        >>> head = fit_logistic_regression(x, torch.tensor([0, 0, 1, 1]), 1e-3, classes=2)
        >>> head(x).argmax(1).tolist()
        [0, 0, 1, 1]
    """
    check_positive_int("classes", classes)
    check_positive_int("max_iter", max_iter)
    l2 = _check_l2(l2)
    x, y = _check_problem(x, y, classes)
    if standardized is None:
        standardized = StandardizedFeatures.of(x, dtype)
    elif standardized.features.shape != x.shape or standardized.features.dtype != dtype:
        raise ValueError(f"standardized must be StandardizedFeatures.of(x, {dtype}) for x of shape {tuple(x.shape)}")
    mean, scale, features = standardized.mean, standardized.scale, standardized.features
    num_features = x.shape[1]
    center = torch.zeros(classes, num_features, dtype=dtype, device=x.device)
    bias_start = torch.zeros(classes, dtype=dtype, device=x.device)
    if init is not None:
        if not isinstance(init, torch.Tensor) or tuple(init.shape) != (classes, num_features):
            shape = tuple(init.shape) if isinstance(init, torch.Tensor) else type(init).__name__
            expected = f"[{classes}, {num_features}] (classes, features)"
            raise ValueError(f"init must be a tensor of shape {expected}; got {shape}")
        raw = init.to(x.device, dtype)
        # W x + b = (W · scale) z + (W mean + b): the same logits in standardised coordinates.
        center = raw * scale
        bias_start = raw @ mean
        if init_bias is not None:
            if not isinstance(init_bias, torch.Tensor) or tuple(init_bias.shape) != (classes,):
                shape = tuple(init_bias.shape) if isinstance(init_bias, torch.Tensor) else type(init_bias).__name__
                raise ValueError(f"init_bias must be a tensor of shape [{classes}]; got {shape}")
            bias_start = bias_start + init_bias.to(x.device, dtype)
    start = center if warm_start is None else warm_start.weight.to(x.device, dtype)
    bias = (bias_start if warm_start is None else warm_start.bias.to(x.device, dtype)).clone()
    # Preconditioning by a change of variables W = V·P, P = (zᵀz/N + μI)^(-1/2) with μ = max(λ, 1% of the mean
    # eigenvalue): the same objective and optimum, but correlated features (a random or collapsed tower's) no longer
    # cost L-BFGS thousands of iterations; the floor μ keeps P from amplifying near-empty directions more than 10x.
    # Any invertible P gives the same optimum, so P need not be exact: the N x F products stay in dtype and only
    # the F x F eigendecomposition runs in float64.
    eigenvalues = standardized.eigenvalues + max(l2, PRECONDITION_FLOOR * float(standardized.eigenvalues.mean()))
    eigenvectors = standardized.eigenvectors
    precondition = ((eigenvectors * eigenvalues.rsqrt()) @ eigenvectors.T).to(dtype)
    inverse = ((eigenvectors * eigenvalues.sqrt()) @ eigenvectors.T).to(dtype)
    # The one [N, F] matrix the fit keeps beyond the caller's features: z itself is never stored.
    zp = standardized.preconditioned(precondition)
    variables = (start @ inverse).contiguous()
    rows = y[:, None]
    minus_one = torch.full((len(y), 1), -1.0, dtype=dtype, device=x.device)

    def objective(weight: torch.Tensor) -> torch.Tensor:
        # Summed in float64 (the logits' matmul stays in dtype), so that a small loss is not lost to rounding; one
        # block of rows at a time, so the float64 logits never take N x C memory.
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        step = _block_rows(max(classes, num_features))
        for start in range(0, len(y), step):
            block = (features[start : start + step] - mean) / scale
            logits = torch.addmm(bias, block, weight.T).double()
            total += F.cross_entropy(logits, y[start : start + step], reduction="sum")
        return total / len(y) + l2 / 2 * (weight.double() - center.double()).square().sum()

    optimizer = torch.optim.LBFGS(
        [variables, bias],
        lr=1,
        max_iter=max_iter,
        tolerance_grad=tolerance,
        tolerance_change=tolerance_change,
        history_size=history_size,
        line_search_fn="strong_wolfe",
    )

    @torch.no_grad()
    def closure() -> torch.Tensor:
        # The gradient in closed form, without autograd's graph (most of a small problem's time otherwise):
        # d/dlogits of the mean cross-entropy is (softmax - one_hot) / N.
        log_probabilities = torch.addmm(bias, zp, variables.T).log_softmax(dim=1)
        difference = variables @ precondition - center
        loss = -log_probabilities.gather(1, rows).sum() / len(y) + l2 / 2 * difference.square().sum()
        residual = log_probabilities.exp_().scatter_add_(1, rows, minus_one)  # N · (softmax - one_hot)
        variables.grad = torch.addmm(difference @ precondition, residual.T, zp, beta=l2, alpha=1 / len(y))
        bias.grad = residual.sum(dim=0) / len(y)
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    iterations = int(optimizer.state[variables].get("n_iter", 0))
    weight = variables @ precondition
    with torch.no_grad():
        loss = float(objective(weight))
    return LogisticHead(weight.detach(), bias.detach(), mean, scale, l2, loss, iterations, center)


def stratified_split(
    y: torch.Tensor, *, fraction: float, seed: int, classes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sample indices into a training and a held-out part, class by class.

    Each class's indices are shuffled by a CPU generator seeded with ``seed`` (one permutation per class, classes
    in increasing order), and its first ``round(fraction · n_c)`` go to the held-out part, at least one and at most
    ``n_c - 1``; a class with a single sample stays in the training part.

    Args:
        y: ``[N]`` class ids.
        fraction: the held-out share, in ``(0, 1)``.
        seed: the generator's seed.
        classes: the number of classes (default ``max(y) + 1``).

    Returns:
        ``(train_indices, held_out_indices)``, each sorted, on the CPU.

    Raises:
        ValueError: a bad ``fraction``, or no class with two samples (nothing can be held out).

    Examples:
        >>> stratified_split(torch.tensor([0, 0, 1, 1, 1]), fraction=0.5, seed=0)[1].shape
        torch.Size([3])
    """
    fraction = _check_fraction(fraction)
    y = y.cpu().long()
    num_classes = int(y.max()) + 1 if classes is None else classes
    generator = torch.Generator().manual_seed(seed)
    train, held_out = [], []
    for c in range(num_classes):
        members = (y == c).nonzero()[:, 0]
        members = members[torch.randperm(len(members), generator=generator)]
        count = 0 if len(members) < 2 else min(max(round(fraction * len(members)), 1), len(members) - 1)
        held_out.append(members[:count])
        train.append(members[count:])
    held = torch.cat(held_out).sort().values
    if len(held) == 0:
        raise ValueError("choosing l2 needs a class with at least 2 training samples to hold one out; pass l2= instead")
    return torch.cat(train).sort().values, held


def choose_l2(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    classes: int,
    seed: int = 0,
    search: L2Search = DEFAULT_SEARCH,
    score: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
    init: torch.Tensor | None = None,
    init_bias: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[float, dict[float, float]]:
    """Choose the L2 strength ``λ`` on a held-out part of the training samples, coarse to fine.

    The protocol: `stratified_split` holds out ``search.validation_fraction`` of each class (seeded by ``seed``); a
    head is fitted on the rest for every ``λ`` of ``search.grid`` (strongest first, each warm-started from the
    previous) and scored on the held-out part; then, for each step ``s`` of ``search.refine`` (in decades),
    ``λ*·10^(-s)`` and ``λ*·10^(+s)`` around the best ``λ*`` so far are fitted and scored, and the best kept (so the
    answer may lie up to 0.875 decades beyond the grid's ends). Every fit runs to ``search.sweep_tolerance`` in at
    most ``search.max_iter`` iterations. Equal scores go to the larger ``λ`` (the simpler head). Only ``x`` and
    ``y`` are read: the test split never enters.

    Args:
        x: ``[N, F]`` training features.
        y: ``[N]`` class ids.
        classes: the number of classes.
        seed: seeds the held-out split.
        search: the sweep's options (its ``tolerance``, the final refit's, is not used here).
        score: ``(logits [M, C], targets [M]) -> float``, higher is better (default top-1 accuracy).
        init: ``[C, F]`` starting and penalty-centre weights (see `fit_logistic_regression`).
        init_bias: ``[C]`` biases going with ``init``.
        dtype: the fits' dtype.

    Returns:
        ``(λ, {λ: held-out score})`` for every λ tried.

    Examples:
        >>> x = torch.arange(20.0)[:, None]
        >>> l2, scores = choose_l2(x, (x[:, 0] >= 10).long(), classes=2, search=L2Search(refine=()))
        >>> len(scores), scores[l2]
        (9, 1.0)
    """
    from unicl.evaluation.metrics import top_k_accuracy

    search = check_instance("search", search, L2Search)
    score_fn = score if score is not None else (lambda logits, targets: top_k_accuracy(logits, targets, 1))
    x, y = _check_problem(x, y, classes)
    train, held = stratified_split(y, fraction=search.validation_fraction, seed=seed, classes=classes)
    train, held = train.to(x.device), held.to(x.device)
    x_train, y_train, x_held, y_held = x[train], y[train], x[held], y[held]
    standardized = StandardizedFeatures.of(x_train, dtype)
    scores: dict[float, float] = {}
    heads: dict[float, LogisticHead] = {}

    def trial(l2: float, start: LogisticHead | None) -> None:
        if l2 in scores:
            return
        head = fit_logistic_regression(x_train, y_train, l2, classes=classes, init=init, init_bias=init_bias,
                                       warm_start=start, max_iter=search.max_iter, tolerance=search.sweep_tolerance,
                                       dtype=dtype,
                                       standardized=standardized)  # fmt: skip
        heads[l2] = head
        with torch.no_grad():
            scores[l2] = float(score_fn(head(x_held).float(), y_held))

    def best() -> float:
        return max(scores, key=lambda value: (scores[value], value))

    previous = None
    for l2 in sorted(search.grid, reverse=True):
        trial(l2, previous)
        previous = heads[l2]
    for step in search.refine:
        center = best()
        for l2 in (center * 10.0**step, center * 10.0**-step):
            trial(l2, heads[center])
    return best(), dict(sorted(scores.items()))
