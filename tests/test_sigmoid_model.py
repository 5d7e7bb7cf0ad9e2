"""A model trained with the sigmoid objective: its learnable logit bias (SigLIP's start: scale 10, bias -10), saved
and loaded with it; its output dict feeds `UniCLSigmoidLoss` directly, through gradient caching too; its class
probabilities use its scale and bias; models saved without a bias still load."""

from __future__ import annotations

import json
import math

import pytest
import torch

import unicl
from unicl.evaluation.zeroshot import zeroshot_probabilities
from unicl.models.model import UniCLModel
from unicl.training.gradient_cache import cached_backward

SIGLIP_START = {"init_temperature": 0.1, "logit_bias": -10.0}


def _batch(seed: int = 0, size: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, 32, 32, generator=generator, dtype=torch.float64)
    ids = torch.randint(0, 600, (size, 16), generator=generator)
    labels = torch.tensor([0, 0, 1, -1, 2, -1])[:size]
    return images, ids, labels


def test_a_sigmoid_model_starts_at_siglips_scale_and_bias_and_returns_the_bias():
    model = unicl.create_model("unicl_tiny", **SIGLIP_START)
    assert float(model.clamped_logit_scale().detach()) == pytest.approx(10.0, rel=1e-6)
    assert model.logit_scale.item() == pytest.approx(math.log(10.0), rel=1e-6)  # stored in log space
    assert isinstance(model.logit_bias, torch.nn.Parameter) and model.logit_bias.item() == -10.0
    images, ids, _ = _batch()
    outputs = model.double()(images, ids)
    assert set(outputs) == {"image_features", "text_features", "logit_scale", "logit_bias"}
    # The bias is trained without weight decay, like the scale.
    no_decay = model.param_groups(0.1)[1]["params"]
    assert any(parameter is model.logit_bias for parameter in no_decay)


def test_a_softmax_model_has_no_bias_and_its_outputs_and_weights_are_as_before():
    model = unicl.create_model("unicl_tiny")
    assert model.logit_bias is None and "logit_bias" not in model.state_dict()
    images, ids, _ = _batch()
    assert set(model.double()(images, ids)) == {"image_features", "text_features", "logit_scale"}


def test_the_models_outputs_are_the_sigmoid_loss_arguments_and_the_bias_gets_its_gradient():
    torch.manual_seed(0)
    model = unicl.create_model("unicl_tiny", **SIGLIP_START).double()
    images, ids, labels = _batch()
    loss = unicl.UniCLSigmoidLoss(backend="dense")(**model(images, ids), labels=labels)
    loss.backward()
    outputs = model(images, ids)
    expected = unicl.unicl_sigmoid_loss(
        outputs["image_features"], outputs["text_features"], labels, outputs["logit_scale"], outputs["logit_bias"],
        backend="dense",
    )  # fmt: skip
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    assert model.logit_bias.grad is not None and torch.isfinite(model.logit_bias.grad)


def test_gradient_caching_passes_the_bias_through_to_the_plain_steps_gradients():
    """float64 inputs: the cached step's gradients (the bias's included) equal the whole-batch step's. (The text
    tower's normalisations compute in float32, so its weights' gradients agree to float32 rounding, as in
    test_gradient_cache.)"""
    torch.manual_seed(0)
    model = unicl.create_model("unicl_tiny", **SIGLIP_START).double().eval()
    images, ids, labels = _batch(1)
    loss_fn = unicl.UniCLSigmoidLoss(backend="chunked")
    plain = loss_fn(**model(images, ids), labels=labels)
    plain.backward()
    expected = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    cached = cached_backward(model, images, ids, labels, loss_fn=loss_fn, micro_batch=2)
    torch.testing.assert_close(cached, plain.detach(), rtol=1e-12, atol=0)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(model.logit_bias.grad, expected["logit_bias"], rtol=1e-9, atol=0)
    assert expected["logit_bias"].abs() > 0


def test_the_bias_is_saved_and_loaded_with_the_model(tmp_path):
    model = unicl.create_model("unicl_tiny", **SIGLIP_START)
    with torch.no_grad():
        model.logit_bias.fill_(-7.25)
    model.save_pretrained(tmp_path / "saved")
    again = unicl.load_model(tmp_path / "saved")
    assert again.config.logit_bias == -10.0 and again.logit_bias.item() == -7.25
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["model"]["logit_bias"] == -10.0


def test_a_model_saved_before_the_bias_existed_still_loads(tmp_path):
    """Its config.json has no logit_bias field and its weights no logit_bias tensor."""
    model = unicl.create_model("unicl_tiny")
    model.save_pretrained(tmp_path / "old")
    path = tmp_path / "old" / "config.json"
    saved = json.loads(path.read_text())
    del saved["model"]["logit_bias"]
    path.write_text(json.dumps(saved))
    again = unicl.load_model(tmp_path / "old")
    assert again.logit_bias is None
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("bias", [None, -10.0])
def test_probabilities_use_the_models_scale_and_bias(bias):
    """float64 against the formula: σ(s·cos + b) per class for a sigmoid model, softmax(s·cos) otherwise."""
    model = unicl.create_model("unicl_tiny", init_temperature=0.1, logit_bias=bias).double()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(12.5))
        if bias is not None:
            model.logit_bias.fill_(-3.5)
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(5, 64, generator=generator, dtype=torch.float64)
    classifier = torch.nn.functional.normalize(torch.randn(4, 64, generator=generator, dtype=torch.float64), dim=-1)
    cosines = torch.nn.functional.normalize(features, dim=-1) @ classifier.T
    probabilities = zeroshot_probabilities(model, features, classifier)
    assert probabilities.dtype == torch.float64 and probabilities.shape == (5, 4)
    expected = torch.sigmoid(12.5 * cosines - 3.5) if bias is not None else (12.5 * cosines).softmax(dim=1)
    torch.testing.assert_close(probabilities, expected, rtol=1e-12, atol=0)


def test_probabilities_refuse_what_is_not_a_unicl_model_or_mismatched_shapes():
    model = unicl.create_model("unicl_tiny")
    with pytest.raises(TypeError, match=r"^model must be a unicl\.UniCLModel; got Linear$"):
        zeroshot_probabilities(torch.nn.Linear(2, 2), torch.randn(2, 64), torch.randn(3, 64))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"same D; got \(2, 64\) and \(3, 32\)"):
        zeroshot_probabilities(model, torch.randn(2, 64), torch.randn(3, 32))
    assert isinstance(model, UniCLModel)


def test_softmax_weights_start_a_sigmoid_model_with_its_own_bias(tmp_path):
    """Fine-tuning a softmax-trained model with the sigmoid objective: every tensor comes from the checkpoint but
    the bias, which it lacks and which keeps SigLIP's start; anything else missing is still refused."""
    from unicl.models.serialization import load_pretrained_into

    softmax = unicl.create_model("unicl_tiny")
    softmax.save_pretrained(tmp_path / "softmax")
    sigmoid = load_pretrained_into(unicl.create_model("unicl_tiny", **SIGLIP_START), tmp_path / "softmax")
    assert sigmoid.logit_bias.item() == -10.0
    loaded = {name: tensor for name, tensor in sigmoid.state_dict().items() if name != "logit_bias"}
    assert all(torch.equal(tensor, softmax.state_dict()[name]) for name, tensor in loaded.items())
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "softmax" / "model.safetensors"))
    del tensors["logit_scale"]
    save_file(tensors, str(tmp_path / "incomplete.safetensors"))
    with pytest.raises(ValueError, match=r"1 missing: \['logit_scale'\]"):
        load_pretrained_into(unicl.create_model("unicl_tiny", **SIGLIP_START), tmp_path / "incomplete.safetensors")
