"""Fine-tuning a model's towers (`unicl.training.towers`): every parameter of unicl's, open_clip's and transformers'
models is placed in its tower by name; a frozen tower gets no gradient, stays out of the optimiser and runs in
evaluation mode; ``tower_lr`` gives the towers their own learning rate; without the options the optimiser's groups
are the model's own."""

from __future__ import annotations

import pytest
import torch

import unicl
from unicl.training.towers import TOWERS, freeze_towers, hold_frozen_in_eval, optimizer_groups, tower_of


def _tiny() -> unicl.UniCLModel:
    torch.manual_seed(0)
    return unicl.create_model("unicl_tiny", embed_dim=16, text={"layers": 1})


def _expected_unicl_tower(name: str) -> str | None:
    return {"image_encoder": "image", "image_projection": "image", "text_encoder": "text",
            "text_projection": "text"}.get(name.split(".")[0])  # fmt: skip


def test_every_unicl_parameter_but_the_logit_scale_and_bias_is_in_its_tower():
    model = unicl.create_model("unicl_tiny", embed_dim=16, text={"layers": 1}, logit_bias=-10.0)
    for name, _ in model.named_parameters():
        assert tower_of(name) == _expected_unicl_tower(name), name
    assert tower_of("logit_scale") is None and tower_of("logit_bias") is None


def test_open_clip_parameters_are_placed_by_its_module_names():
    open_clip = pytest.importorskip("open_clip")
    vision = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16}
    text = {"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1}
    model = open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text)
    for name, _ in model.named_parameters():
        expected = None if name in ("logit_scale", "logit_bias") else "image" if name.startswith("visual.") else "text"
        # Wrapped under a prefix, as an adapter holds it, the same.
        assert tower_of(name) == tower_of(f"model.{name}") == expected, name


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_transformers_parameters_are_placed_by_its_module_names(kind):
    transformers = pytest.importorskip("transformers")
    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {**sizes, "vocab_size": 50, "max_position_embeddings": 8}
    vision = {**sizes, "image_size": 32, "patch_size": 8}
    if kind == "clip":
        config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
        model = transformers.CLIPModel(config)
    else:
        model = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision))
    for name, _ in model.named_parameters():
        top = name.split(".")[0]
        expected = {"vision_model": "image", "visual_projection": "image", "text_model": "text",
                    "text_projection": "text"}.get(top)  # fmt: skip
        assert tower_of(name) == expected, name


def test_without_the_options_the_optimiser_gets_the_models_own_groups():
    model = _tiny()
    own, groups = model.param_groups(0.05), optimizer_groups(model, 0.05)
    assert len(own) == len(groups)
    for mine, theirs in zip(groups, own):
        assert mine.keys() == theirs.keys() and mine["weight_decay"] == theirs["weight_decay"]
        assert [id(p) for p in mine["params"]] == [id(p) for p in theirs["params"]]


@pytest.mark.parametrize("frozen", [["image"], ["text"], ["image", "text"]])
def test_a_frozen_tower_gets_no_gradient_and_stays_out_of_the_optimiser(frozen):
    model = _tiny()
    modules = freeze_towers(model, frozen)
    names = {id(p): n for n, p in model.named_parameters()}
    in_optimizer = {names[id(p)] for group in optimizer_groups(model, 0.05) for p in group["params"]}
    outputs = model(torch.randn(4, 3, 32, 32), torch.randint(0, 1000, (4, 16)))
    unicl.UniCLLoss(normalize=False)(**outputs, labels=torch.tensor([0, 0, 1, 2])).backward()
    for name, parameter in model.named_parameters():
        trained = tower_of(name) not in frozen
        assert (parameter.grad is not None) == trained, name
        assert (name in in_optimizer) == trained, name
    assert {tower_of(n) for n, m in model.named_modules() if any(m is x for x in modules)} == set(frozen)
    model.train()
    hold_frozen_in_eval(modules)
    for name, module in model.named_modules():
        if name:
            assert module.training == (tower_of(name) not in frozen), name


def test_tower_lr_gives_the_towers_their_rate_and_the_scale_and_bias_the_optimisers():
    model = unicl.create_model("unicl_tiny", embed_dim=16, text={"layers": 1}, logit_bias=-10.0)
    freeze_towers(model, ["text"])
    groups = optimizer_groups(model, 0.05, tower_lr=1e-5)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for group in groups:
        assert group["params"]
        for parameter in group["params"]:
            name = names[id(parameter)]
            seen.add(name)
            assert group.get("lr") == (1e-5 if tower_of(name) == "image" else None), name
    assert seen == {n for n, p in model.named_parameters() if tower_of(n) != "text"}
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    assert sorted({group["lr"] for group in optimizer.param_groups}) == [1e-5, 1e-3]


@pytest.mark.parametrize("tower_lr", [None, 1e-5])
def test_logit_lr_gives_the_scale_and_bias_their_rate_beside_the_towers(tower_lr):
    model = unicl.create_model("unicl_tiny", embed_dim=16, text={"layers": 1}, logit_bias=-10.0)
    groups = optimizer_groups(model, 0.05, tower_lr=tower_lr, logit_lr=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    rates = {names[id(p)]: group.get("lr") for group in groups for p in group["params"]}
    assert set(rates) == set(names.values())
    assert {name for name, rate in rates.items() if rate == 0.05} == {"logit_scale", "logit_bias"}
    assert all(rate == tower_lr for name, rate in rates.items() if tower_of(name) is not None)
    assert all(group["weight_decay"] == 0.0 for group in groups if group.get("lr") == 0.05)


def test_a_tower_the_model_lacks_is_refused_naming_its_option():
    with pytest.raises(ValueError, match=r"^--freeze-image: Linear has no parameter of the image tower"):
        freeze_towers(torch.nn.Linear(2, 2), ["image"])
    with pytest.raises(ValueError, match=r"towers must be among \('image', 'text'\); got 'audio'"):
        freeze_towers(_tiny(), ["audio"])
    assert TOWERS == ("image", "text")


@pytest.fixture(scope="module")
def adapter_models(tmp_path_factory) -> dict[str, dict]:
    """`unicl.create_model`'s arguments of a tiny adapter model per library (tests/adapter_models.py)."""
    pytest.importorskip("open_clip")
    pytest.importorskip("transformers")
    from adapter_models import ARCH, build_clip_dir, build_open_clip_file, build_siglip_dir

    folder = tmp_path_factory.mktemp("towers")
    return {
        "open_clip": {"name": f"open_clip:{ARCH}", "pretrained": build_open_clip_file(folder)},
        "hf-clip": {"name": f"hf:{build_clip_dir(folder)}"},
        "hf-siglip": {"name": f"hf:{build_siglip_dir(folder)}"},
    }


def _expected_library_tower(kind: str, name: str) -> str | None:
    """The tower of the wrapped model's parameter ``name`` by its library's module layout."""
    if name in ("logit_scale", "logit_bias"):
        return None
    if kind == "open_clip":
        return "image" if name.startswith("visual.") else "text"
    return {"vision_model": "image", "visual_projection": "image", "text_model": "text",
            "text_projection": "text"}[name.split(".")[0]]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["open_clip", "hf-clip", "hf-siglip"])
@pytest.mark.parametrize("frozen", ["image", "text"])
def test_an_adapters_parameters_are_placed_and_a_frozen_tower_leaves_its_groups(adapter_models, kind, frozen):
    """The adapter holds the library's model as ``model``: its parameters are ``model.`` and the library's names."""
    model = unicl.create_model(**adapter_models[kind])
    names = {id(p): n for n, p in model.named_parameters()}
    for name in names.values():
        assert name.startswith("model.") and tower_of(name) == _expected_library_tower(kind, name[6:]), name
    modules = freeze_towers(model, [frozen])
    model.train()
    hold_frozen_in_eval(modules)
    for name, module in model.named_modules():
        if tower_of(name) is not None:
            assert module.training == (tower_of(name) != frozen), name
    grouped = [names[id(p)] for group in model.param_groups(0.1) for p in group["params"]]
    assert sorted(grouped) == sorted(n for n in names.values() if tower_of(n) != frozen)
    groups = optimizer_groups(model, 0.1, tower_lr=1e-5)
    rates = {names[id(p)]: group.get("lr") for group in groups for p in group["params"]}
    assert rates == {n: (None if tower_of(n) is None else 1e-5) for n in grouped}
