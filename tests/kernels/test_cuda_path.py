"""The CUDA branch of unicl.loss.kernels and unicl.loss.backends, executed on the CPU (tests/kernels/cuda_harness.py).

Each test runs the code a GPU user runs: capability lookup and tile tables, launch plans, Triton's autotuner with
its key and ``early_config_prune``, grids, the half-precision GEMMs with float32 results; only the compiled kernel
(Triton's interpreter runs it instead, with the configuration the autotuner picked), the autotuner's timing and
cuBLAS's mixed-precision products are stand-ins. Results are compared with float64 from the same rounded inputs.
"""

from __future__ import annotations

import pytest
import torch
from cuda_harness import fake_cuda
from reference import (
    RELATIVE_BOUNDS,
    assert_matches_float64,
    assert_relative_close,
    float64_loss_and_grads,
    reference_sigmoid_loss,
    reference_sigmoid_terms,
)

import unicl.loss.chunked as chunked
import unicl.loss.matmul as matmul
from unicl import unicl_loss, unicl_sigmoid_loss
from unicl.loss.backends import block_terms, resolve_backend, row_terms
from unicl.loss.engine import Similarity
from unicl.loss.kernels import one_pass, tiles, tuning, two_pass
from unicl.loss.kernels.availability import interpreter_active
from unicl.loss.kernels.one_pass import OnePassEngine
from unicl.loss.kernels.plan import cdiv, super_chunks, weights_programs
from unicl.loss.kernels.tuning import SHARED_MEMORY_LIMIT, prune_for
from unicl.loss.objectives import SIGMOID
from unicl.loss.targets import target_keys

pytestmark = pytest.mark.skipif(not interpreter_active(), reason="needs TRITON_INTERPRET=1 set before importing triton")

CAPABILITIES = [divmod(c, 10) for c in sorted(SHARED_MEMORY_LIMIT)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
#: Kernels of each schedule (the two-pass forward is the row kernel both schedules share).
SCHEDULES = {"triton": (one_pass.PARTIALS, one_pass.WEIGHTS), "triton_rowwise": (tiles.LSE, two_pass.GRAD)}
#: Wide enough that no tile is pruned for width (BLOCK_K and BLOCK_D up to 256), ragged in N.
N, D = 37, 200
#: Largest number of candidates any (kernel, chip, dtype) has.
MOST_CANDIDATES = max(
    len(spec.configs_for(capability, dtype))
    for specs in SCHEDULES.values()
    for spec in specs
    for capability in CAPABILITIES
    for dtype in DTYPES
)


def _batch(n, d, dtype, seed=0, classes=4):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(n, d, generator=generator).to(dtype).requires_grad_()
    text = torch.randn(n, d, generator=generator).to(dtype).requires_grad_()
    labels = torch.randint(-1, classes, (n,), generator=generator)
    return image, text, labels


def _loss_and_grads(image, text, labels, scale, backend, **options):
    loss = unicl_loss(image, text, labels, scale, backend=backend, **options)
    return (loss, *torch.autograd.grad(loss, [image, text, scale]))


def _with_each_kernel_picking(monkeypatch, capability, dtype, specs, index, run):
    """``run()`` on the fake chip with the autotuner of every kernel of ``specs`` made to pick its ``index``-th
    candidate (the last one where there are fewer); asserts that each launched with it (where pruning kept it) and
    returns what ``run`` returned."""
    wanted, by_function = {}, {}
    for spec in specs:
        candidates = spec.configs_for(capability, dtype)
        by_function[spec.kernel.__name__] = spec
        wanted[spec.kernel.__name__] = candidates[min(index, len(candidates) - 1)].kwargs

    def timing(function_name, config):
        return 0.5 if config == wanted[function_name] else 1.0

    with fake_cuda(monkeypatch, capability, timing) as gpu:
        result = run()
    for function_name, config in wanted.items():
        candidates = by_function[function_name].configs_for(capability, dtype)
        survivors = [c.kwargs for c in prune_for(capability, dtype)(candidates, {"D": D})]
        ran = {tuple(sorted(c.items())) for name, c in gpu.picked if name == function_name}
        assert ran, f"{function_name} never launched"
        if config in survivors:
            assert ran == {tuple(sorted(config.items()))}
    return result


@pytest.mark.slow
@pytest.mark.parametrize("index", range(MOST_CANDIDATES))
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("capability", CAPABILITIES, ids=lambda c: f"sm{c[0]}{c[1]}")
def test_every_configuration_runs_through_the_autotuner(monkeypatch, capability, dtype, schedule, index):
    """The autotuner of every kernel is made to pick its ``index``-th candidate (the last one where there are
    fewer); the launch runs with it and the loss and gradients match float64."""
    image, text, labels = _batch(N, D, dtype, seed=index)
    scale = torch.tensor(20.0, requires_grad=True)
    got = _with_each_kernel_picking(
        monkeypatch, capability, dtype, SCHEDULES[schedule], index,
        lambda: _loss_and_grads(image, text, labels, scale, schedule),
    )  # fmt: skip
    assert_matches_float64(got, float64_loss_and_grads(image, text, labels, scale), dtype)


def _record_pruning_inputs(monkeypatch) -> list[dict]:
    """The named arguments every autotuner's ``early_config_prune`` sees from now on, in a list that fills as
    launches run."""
    seen: list[dict] = []
    original = prune_for

    def recording_prune_for(capability, dtype):
        prune = original(capability, dtype)

        def wrapped(configs, named_args, **kwargs):
            seen.append(dict(named_args))
            return prune(configs, named_args, **kwargs)

        return wrapped

    monkeypatch.setattr(tuning, "prune_for", recording_prune_for)  # where every kernel module's autotuner reads it
    return seen


def test_the_launch_passes_the_autotuners_key_and_pruning_inputs_by_position(monkeypatch):
    """Triton's autotuner reads its key and prune inputs from positional arguments only; given everything by
    keyword, ``early_config_prune`` saw ``{}`` and every launch raised ``KeyError: 'D'``."""
    seen = _record_pruning_inputs(monkeypatch)
    image, text, labels = _batch(N, D, torch.bfloat16)
    with fake_cuda(monkeypatch, (9, 0)):
        unicl_loss(image, text, labels, 10.0, backend="triton").backward()
    assert seen and all({"M", "N", "D", "stride_q", "stride_k"} <= set(args) for args in seen)
    assert {args["D"] for args in seen} == {D}


@pytest.mark.slow
@pytest.mark.parametrize(("capability", "dtype"), [((8, 0), torch.float32), ((9, 0), torch.float16)], ids=str)
def test_super_chunks_and_column_ranges_on_the_cuda_plan(monkeypatch, capability, dtype):
    """N = 300 with ``chunk_size=128``: three forward and backward super-chunks (the last one short), and with 108
    or 132 fake multiprocessors the plan gives every super-chunk two column ranges."""
    image, text, labels = _batch(300, 40, dtype, seed=3, classes=20)
    scale = torch.tensor(25.0, requires_grad=True)
    with fake_cuda(monkeypatch, capability) as gpu:
        sim = Similarity(image.detach(), text.detach(), scale.detach())
        rows, cols_per_range = OnePassEngine(128).forward_plan(sim)
        assert (rows, cdiv(300, cols_per_range)) == (128, 2)
        got = _loss_and_grads(image, text, labels, scale, "triton", chunk_size=128)
    assert sum(name == "_one_pass_partials_kernel" for name, _ in gpu.picked) == 3
    assert sum(name == "_one_pass_weights_kernel" for name, _ in gpu.picked) == 3
    assert_matches_float64(got, float64_loss_and_grads(image, text, labels, scale), dtype)


def _float64_row_terms(u, v, scale, row_labels, col_labels):
    """``logsumexp_j S_ij`` minus the mean positive logit of row ``i`` for a rectangular block, float64."""
    u = u.double() / u.double().norm(dim=1, keepdim=True)
    v = v.double() / v.double().norm(dim=1, keepdim=True)
    logits = scale * u @ v.T
    targets = (row_labels[:, None] == col_labels[None, :]).double()
    return torch.logsumexp(logits, 1) - (logits * targets).sum(1) / targets.sum(1)


@pytest.mark.parametrize("backend", ["triton", "triton_rowwise", "chunked"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rows_only_blocks_on_the_cuda_path(monkeypatch, backend, dtype):
    """Distributed local mode's call: 20 local rows against 70 global columns, rows only, forward and backward."""
    generator = torch.Generator().manual_seed(4)
    u = torch.randn(20, 48, generator=generator).to(dtype).requires_grad_()
    v = torch.randn(70, 48, generator=generator).to(dtype).requires_grad_()
    labels = torch.randint(-1, 5, (70,), generator=generator)
    keys = target_keys(labels, 70, torch.device("cpu"))
    row_keys, col_keys = keys[10:30], keys
    scale = torch.tensor(15.0)
    with fake_cuda(monkeypatch, (9, 0)):
        terms = row_terms(u, v, scale, row_keys, col_keys, normalize=True, backend=backend)
        grads = torch.autograd.grad(terms.sum(), [u, v])
    exact_u, exact_v = u.detach().double().requires_grad_(), v.detach().double().requires_grad_()
    exact = _float64_row_terms(exact_u, exact_v, 15.0, row_keys, col_keys)
    exact_grads = torch.autograd.grad(exact.sum(), [exact_u, exact_v])
    loss_bound, grad_bound = RELATIVE_BOUNDS[dtype]
    assert_relative_close(terms, exact, loss_bound, "row terms")
    for got, want in zip(grads, exact_grads):
        assert_relative_close(got, want, grad_bound, "gradient")


@pytest.mark.slow
@pytest.mark.parametrize("in_place", [True, False], ids=["addmm-float32-accumulator", "float32-temporary"])
@pytest.mark.parametrize("backend", ["triton", "chunked"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_gemms_with_float32_results(monkeypatch, backend, dtype, in_place):
    """The backward's products of rounded softmax weights with half features, float32 results: the in-place
    ``addmm`` into a float32 accumulator (CUDA) and the temporary where a device's ``addmm`` refuses it."""
    monkeypatch.setattr(matmul, "_MIXED_ADDMM_IN_PLACE_DEVICES", ("cuda", "meta", "cpu") if in_place else ())
    image, text, labels = _batch(90, 40, dtype, seed=5)
    scale = torch.tensor(30.0, requires_grad=True)
    calls = []
    original = matmul.mixed_addmm_

    def counting(acc, a, b):
        calls.append((a.dtype, acc.dtype))
        return original(acc, a, b)

    monkeypatch.setattr(chunked, "mixed_addmm_", counting)
    monkeypatch.setattr(one_pass, "mixed_addmm_", counting)
    with fake_cuda(monkeypatch, (9, 0)):
        got = _loss_and_grads(image, text, labels, scale, backend, chunk_size=32)
    assert calls and all(pair == (dtype, torch.float32) for pair in calls)
    assert_matches_float64(got, float64_loss_and_grads(image, text, labels, scale), dtype)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["triton", "chunked"])
def test_float16_gradients_hold_at_n_2048(monkeypatch, backend):
    """The mean loss at N = 2,048 in float16 on Hopper's tiles: the softmax weights ``P/(2N)`` are below float16's
    smallest subnormal unless scaled before rounding; gradients within 1e-2 of float64, the loss within 1e-4. (The
    two-pass schedule shares the scaling, in the autograd function; its float16 gradients are checked against
    float64 at N <= 130 in tests/kernels/test_triton_interpreter.py, where its interpreter run is affordable.)"""
    image, text, labels = _batch(2048, 32, torch.float16, seed=11, classes=50)
    scale = torch.tensor(30.0, requires_grad=True)
    with fake_cuda(monkeypatch, (9, 0)):
        got = _loss_and_grads(image, text, labels, scale, backend)
    assert_matches_float64(got, float64_loss_and_grads(image, text, labels, scale), torch.float16)


@pytest.mark.slow
def test_autotuners_are_kept_per_size_bucket(monkeypatch):
    """A tile picked at a small first batch does not serve a large one: each power-of-two bucket of N times the
    candidates anew, and a bucket seen before reuses its pick."""
    preferred = {}

    def timing(function_name, config):
        return 0.5 if config == preferred.get(function_name) else 1.0

    candidates = one_pass.PARTIALS.configs_for((9, 0), torch.bfloat16)
    scale = torch.tensor(10.0)
    with fake_cuda(monkeypatch, (9, 0), timing) as gpu:
        picks = []
        for n, favourite in [(37, candidates[1]), (300, candidates[0]), (40, candidates[0])]:
            preferred["_one_pass_partials_kernel"] = favourite.kwargs
            image, text, _ = _batch(n, 64, torch.bfloat16)
            gpu.picked.clear()
            unicl_loss(image.detach(), text.detach(), None, scale, backend="triton")
            picks.append(next(c for name, c in gpu.picked if name == "_one_pass_partials_kernel"))
    # N = 40 shares N = 37's bucket (64), so it keeps the tile timed there although the timings changed.
    assert picks == [candidates[1].kwargs, candidates[0].kwargs, candidates[1].kwargs]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("capability", CAPABILITIES, ids=lambda c: f"sm{c[0]}{c[1]}")
def test_grids_launch_at_n_2_to_the_24(monkeypatch, capability, dtype):
    """The plans at N = 2^24, D = 512 on meta tensors (nothing allocated): every grid dimension of every kernel and
    configuration is within CUDA's limits (x < 2^31, y and z < 2^16), and the offsets that pass 2^31 are the ones
    the kernels compute in 64 bits."""
    n, d = 1 << 24, 512
    u = torch.empty(n, d, dtype=dtype, device="meta")
    sim = Similarity(u, u, torch.empty((), device="meta"))
    with fake_cuda(monkeypatch, capability):
        engine = OnePassEngine()
        forward_rows, cols_per_range = engine.forward_plan(sim)
        backward_rows = engine.backward_rows(sim)
    ranges = cdiv(n, cols_per_range)
    assert ranges < 1 << 16
    for config in one_pass.PARTIALS.configs_for(capability, dtype):
        assert cdiv(forward_rows, config.kwargs["BLOCK_M"]) < 1 << 31
    for config in one_pass.WEIGHTS.configs_for(capability, dtype):
        assert weights_programs(backward_rows, n, config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]) < 1 << 31
    for spec in (tiles.LSE, tiles.SIGMOID_LSE):  # the row kernel: the two-pass forward, and the sigmoid's in both
        for config in spec.configs_for(capability, dtype):
            assert cdiv(n, config.kwargs["BLOCK_M"]) < 1 << 31
    for config in two_pass.GRAD.configs_for(capability, dtype):
        assert cdiv(n, config.kwargs["BLOCK_M"]) < 1 << 31 and cdiv(d, config.kwargs["BLOCK_D"]) < 1 << 16
    assert sum(chunk.rows for chunk in super_chunks(n, backward_rows)) == n
    # The weights kernel's tiles at this N would need 2^18 programs in a second grid dimension (the old layout).
    assert cdiv(n, 64) > 1 << 16


def test_auto_uses_the_chunked_backend_on_cuda_until_a_gpu_run_is_recorded():
    """No Triton kernel has run on a GPU yet (benchmarks/results has no gpu-* run), so ``auto`` does not pick it."""
    for dtype in DTYPES:
        assert resolve_backend("auto", torch.device("cuda"), dtype, 4096, 4096) == "chunked"
    assert resolve_backend("triton", torch.device("cuda"), torch.bfloat16, 4096, 4096) == "triton"


# --- the sigmoid objective on the CUDA path --------------------------------------------------------------------------

#: Kernels of each schedule for the sigmoid objective: the row kernel is both schedules' forward (rows only).
SIGMOID_SCHEDULES = {
    "triton": (tiles.SIGMOID_LSE, one_pass.WEIGHTS),
    "triton_rowwise": (tiles.SIGMOID_LSE, two_pass.GRAD),
}
SIGMOID_NAMES = ("loss", "grad image", "grad text", "grad scale", "grad bias")


def _sigmoid_loss_and_grads(image, text, labels, scale, bias, backend, **options):
    loss = unicl_sigmoid_loss(image, text, labels, scale, bias, backend=backend, **options)
    return (loss, *torch.autograd.grad(loss, [image, text, scale, bias]))


def _float64_sigmoid(image, text, labels, scale, bias):
    leaves = [t.detach().double().requires_grad_() for t in (image, text, scale, bias)]
    loss = reference_sigmoid_loss(leaves[0], leaves[1], labels.tolist(), leaves[2], leaves[3])
    return (loss, *torch.autograd.grad(loss, leaves))


def _sigmoid_leaves():
    return torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(MOST_CANDIDATES))
@pytest.mark.parametrize("schedule", sorted(SIGMOID_SCHEDULES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("capability", CAPABILITIES, ids=lambda c: f"sm{c[0]}{c[1]}")
def test_every_sigmoid_configuration_runs_through_the_autotuner(monkeypatch, capability, dtype, schedule, index):
    """As for the softmax objective: every kernel's autotuner picks its ``index``-th candidate, the launch runs with
    it, and the sigmoid loss and its gradients (features, scale, bias) match float64."""
    image, text, labels = _batch(N, D, dtype, seed=index)
    scale, bias = _sigmoid_leaves()
    got = _with_each_kernel_picking(
        monkeypatch, capability, dtype, SIGMOID_SCHEDULES[schedule], index,
        lambda: _sigmoid_loss_and_grads(image, text, labels, scale, bias, schedule),
    )  # fmt: skip
    assert_matches_float64(got, _float64_sigmoid(image, text, labels, scale, bias), dtype, SIGMOID_NAMES)


@pytest.mark.parametrize("backend", sorted(SIGMOID_SCHEDULES))
def test_sigmoid_launches_pass_the_objective_by_position(monkeypatch, backend):
    """Every sigmoid launch hands the autotuner its key and pruning inputs, ``OBJECTIVE`` among them (the key that
    keeps the objectives' tunings apart), and runs the schedule's kernels: the row kernel forward, then the
    one-pass weights or the two-pass gradient kernel."""
    seen = _record_pruning_inputs(monkeypatch)
    image, text, labels = _batch(N, D, torch.bfloat16)
    scale, bias = _sigmoid_leaves()
    with fake_cuda(monkeypatch, (9, 0)) as gpu:
        unicl_sigmoid_loss(image, text, labels, scale, bias, backend=backend).backward()
    assert seen and all({"M", "N", "D", "stride_q", "stride_k", "OBJECTIVE"} <= set(args) for args in seen)
    assert {args["OBJECTIVE"] for args in seen} == {SIGMOID.kernel_code}
    assert {name for name, _ in gpu.picked} == {spec.kernel.__name__ for spec in SIGMOID_SCHEDULES[backend]}


def test_the_objectives_are_tuned_apart(monkeypatch):
    """The row kernel at the same chip, dtype, sizes and D is timed once for the softmax objective and once more for
    the sigmoid one: a tile tuned for one objective's entry functions does not serve the other."""
    image, text, labels = _batch(N, D, torch.bfloat16)
    with fake_cuda(monkeypatch, (9, 0)) as gpu:
        unicl_loss(image.detach(), text.detach(), labels, 10.0, backend="triton_rowwise")
        softmax_timed = sum(name == "_row_statistics_kernel" for name, _ in gpu.timed)
        unicl_sigmoid_loss(image.detach(), text.detach(), labels, backend="triton_rowwise")
        both_timed = sum(name == "_row_statistics_kernel" for name, _ in gpu.timed)
    prune = prune_for((9, 0), torch.bfloat16)
    survivors = prune(tiles.LSE.configs_for((9, 0), torch.bfloat16), {"D": D})
    sigmoid_survivors = prune(tiles.SIGMOID_LSE.configs_for((9, 0), torch.bfloat16), {"D": D})
    assert softmax_timed == len(survivors) > 1
    assert both_timed == softmax_timed + len(sigmoid_survivors)


@pytest.mark.parametrize("backend", sorted(SIGMOID_SCHEDULES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sigmoid_rows_only_blocks_on_the_cuda_path(monkeypatch, backend, dtype):
    """Distributed local mode's call with the sigmoid objective: 20 local rows against 70 global columns, the row
    kernel forward and the backward without column weights (the two-pass schedule's ``Hᵀ U`` launch gets the rows'
    weights as column weights), against float64 for the terms and the gradients of both features and the bias."""
    generator = torch.Generator().manual_seed(4)
    u = torch.randn(20, 48, generator=generator).to(dtype).requires_grad_()
    v = torch.randn(70, 48, generator=generator).to(dtype).requires_grad_()
    labels = torch.randint(-1, 5, (70,), generator=generator)
    keys = target_keys(labels, 70, torch.device("cpu"))
    bias = torch.tensor(-6.0, requires_grad=True)
    with fake_cuda(monkeypatch, (9, 0)):
        terms = block_terms(u, v, torch.tensor(8.0), keys[10:30], keys, True, backend, None, False, SIGMOID, bias)[0]
        grads = torch.autograd.grad(terms.sum(), [u, v, bias])
    exact_u, exact_v = u.detach().double().requires_grad_(), v.detach().double().requires_grad_()
    exact_bias = bias.detach().double().requires_grad_()
    # The other ranks' images (any values) do not enter these rows' terms.
    image = torch.cat([torch.randn(10, 48, dtype=torch.float64), exact_u, torch.randn(40, 48, dtype=torch.float64)])
    exact = reference_sigmoid_terms(image, exact_v, labels.tolist(), 8.0, exact_bias)[10:30]
    exact_grads = torch.autograd.grad(exact.sum(), [exact_u, exact_v, exact_bias])
    loss_bound, grad_bound = RELATIVE_BOUNDS[dtype]
    assert_relative_close(terms, exact, loss_bound, "row terms")
    for got, want, name in zip(grads, exact_grads, ("image", "text", "bias"), strict=True):
        assert_relative_close(got, want, grad_bound, f"gradient of the {name}")


@pytest.mark.parametrize(("capability", "dtype"), [((8, 0), torch.float32), ((9, 0), torch.float16)], ids=str)
def test_sigmoid_backward_super_chunks_on_the_cuda_plan(monkeypatch, capability, dtype):
    """The one-pass sigmoid at N = 70 with ``chunk_size=32``: one forward launch of the row kernel (rows only, no
    super-chunks or column ranges) and three backward weights launches (the last of 6 rows), against float64."""
    image, text, labels = _batch(70, 40, dtype, seed=3, classes=10)
    scale, bias = _sigmoid_leaves()
    with fake_cuda(monkeypatch, capability) as gpu:
        got = _sigmoid_loss_and_grads(image, text, labels, scale, bias, "triton", chunk_size=32)
    assert sum(name == "_row_statistics_kernel" for name, _ in gpu.picked) == 1
    assert sum(name == "_one_pass_weights_kernel" for name, _ in gpu.picked) == 3
    assert not any(name == "_one_pass_partials_kernel" for name, _ in gpu.picked)
    assert_matches_float64(got, _float64_sigmoid(image, text, labels, scale, bias), dtype, SIGMOID_NAMES)
