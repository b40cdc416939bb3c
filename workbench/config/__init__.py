"""Option dataclasses (declared once; CLI flags, forms and YAML are generated from them)."""

from workbench.config.base import (  # noqa: F401
    OptionError,
    Options,
    WorkbenchError,
    add_arguments,
    dump_yaml,
    from_mapping,
    load_yaml,
    option,
    split_mapping,
)
from workbench.config.generation import GenerationArgs  # noqa: F401
from workbench.config.model import ModelArgs  # noqa: F401
