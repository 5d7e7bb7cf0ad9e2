"""Fine-tuning a model's towers: which parameters belong to the image or the text tower, freezing a tower, and the
optimiser's groups with a learning rate of the towers' own.

A parameter belongs to a tower by the parts of its dotted name, so the same rule covers unicl's models
(``image_encoder``, ``image_projection``; ``text_encoder``, ``text_projection``), open_clip's (``visual``; the
text tower's ``transformer``, ``token_embedding``, ``positional_embedding``, ``ln_final``, ``text_projection``, or
``text``) and transformers' ``CLIPModel`` and ``SiglipModel`` (``vision_model``, ``visual_projection``;
``text_model``, ``text_projection``), wrapped under any prefix. The image parts are looked for first (open_clip's
image tower holds a ``transformer`` too). Everything else (the logit scale and, for the sigmoid objective, the logit
bias) belongs to neither tower and trains at ``--lr``, or at ``--logit-lr`` (the sigmoid run's default, see
`unicl.training.step.logit_learning_rate`).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from unicl.models.model import UniCLModel

#: The two towers, in the order the options name them.
TOWERS = ("image", "text")
#: The name parts that put a parameter or module in each tower.
TOWER_PARTS = {
    "image": frozenset({"image_encoder", "image_projection", "visual", "vision_model", "visual_projection"}),
    "text": frozenset({
        "text_encoder", "text_projection", "text_model", "text", "transformer", "token_embedding",
        "positional_embedding", "ln_final",
    }),
}  # fmt: skip


def tower_of(name: str) -> str | None:
    """The tower (``"image"`` or ``"text"``) the parameter or module ``name`` belongs to, or ``None`` (the logit
    scale and bias).

    Examples:
        >>> tower_of("image_encoder.blocks.0.attn.qkv.weight"), tower_of("visual.transformer.resblocks.0.ln_1.bias")
        ('image', 'image')
        >>> tower_of("model.text_model.embeddings.token_embedding.weight"), tower_of("logit_scale")
        ('text', None)
    """
    parts = set(name.split("."))
    for tower in TOWERS:
        if parts & TOWER_PARTS[tower]:
            return tower
    return None


def freeze_towers(model: nn.Module, towers: Iterable[str]) -> list[nn.Module]:
    """Stop the gradients of every parameter of ``towers`` (``requires_grad`` off), in place.

    Args:
        model: the model (a unicl, open_clip or transformers model, or a wrapper of one).
        towers: some of `TOWERS`.

    Returns:
        The outermost modules of the frozen towers, for `hold_frozen_in_eval`.

    Raises:
        ValueError: a tower this model has no parameter of (named, with the option that asked for it).
    """
    towers = list(towers)
    for tower in towers:
        if tower not in TOWERS:
            raise ValueError(f"towers must be among {TOWERS}; got {tower!r}")
        frozen = [parameter for name, parameter in model.named_parameters() if tower_of(name) == tower]
        if not frozen:
            raise ValueError(
                f"--freeze-{tower}: {type(model).__name__} has no parameter of the {tower} tower (named by one of "
                f"{sorted(TOWER_PARTS[tower])})"
            )
        for parameter in frozen:
            parameter.requires_grad_(False)
    outermost: list[nn.Module] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if name and tower_of(name) in towers and not any(name.startswith(prefix + ".") for prefix in taken):
            taken.append(name)
            outermost.append(module)
    return outermost


def hold_frozen_in_eval(modules: Iterable[nn.Module]) -> None:
    """Put the modules of frozen towers in evaluation mode: a frozen tower is a fixed function, so its dropout and
    drop-path stay off and its BatchNorm statistics stay those of the weights it was given."""
    for module in modules:
        module.eval()


def optimizer_groups(
    model: UniCLModel, weight_decay: float, tower_lr: float | None = None, logit_lr: float | None = None
) -> list[dict]:
    """The optimiser's parameter groups: the model's own (``model.param_groups(weight_decay)``: weight decay on
    matrices only) without frozen parameters, each split by tower when ``tower_lr`` or ``logit_lr`` is given.

    Args:
        model: has ``param_groups(weight_decay) -> list[dict]`` (unicl's models and its adapters) and
            ``named_parameters``.
        weight_decay: AdamW's weight decay of the decayed group.
        tower_lr: the learning rate of the two towers' parameters (``None``: the optimiser's).
        logit_lr: the learning rate of the parameters of neither tower, the logit scale and bias (``None``: the
            optimiser's; `unicl.training.step.logit_learning_rate` decides it for a run).

    Returns:
        The groups, in the model's order, empty ones left out; with ``tower_lr`` or ``logit_lr``, each model group's
        tower parameters (with ``"lr": tower_lr`` when given) come before its other parameters (with ``"lr":
        logit_lr`` when given). With neither frozen parameters nor either rate, the model's groups as they are.
    """
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    groups = []
    for group in model.param_groups(weight_decay):
        trained = [parameter for parameter in group["params"] if parameter.requires_grad]
        if tower_lr is None and logit_lr is None:
            parts = [{**group, "params": trained}]
        else:
            in_towers = [parameter for parameter in trained if tower_of(names[id(parameter)]) is not None]
            others = [parameter for parameter in trained if tower_of(names[id(parameter)]) is None]
            towers = {"lr": tower_lr} if tower_lr is not None else {}
            logits = {"lr": logit_lr} if logit_lr is not None else {}
            parts = [{**group, "params": in_towers, **towers}, {**group, "params": others, **logits}]
        groups += [part for part in parts if part["params"]]
    return groups
