"""The names of the prompt sets the package ships, in a module that imports nothing, so a command's parser offers
them without loading torch (`unicl.text.prompts` reads the sets)."""

#: The names `unicl.text.prompts.get_templates` accepts: this project's `DEFAULT_TEMPLATES`, `PLAIN_TEMPLATES`,
#: CLIP's 80 ImageNet templates and UniCL's 81.
TEMPLATE_SETS: tuple[str, ...] = ("default", "plain", "clip", "unicl")
#: The ImageNet-1k class-name lists `unicl.text.prompts.imagenet_class_names` accepts.
CLASS_NAME_SETS: tuple[str, ...] = ("clip", "unicl")
