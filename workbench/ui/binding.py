"""Event handlers with their dependencies bound, in the form Gradio reads."""

from __future__ import annotations

import functools
import inspect
from typing import Callable


def bind(fn: Callable, *bound) -> Callable:
    """``fn`` with its first arguments fixed to ``bound`` (a tab's components, the model manager, ...).

    Not ``functools.partial``: Gradio reads the handler itself — it passes ``gr.Request`` only to a parameter it
    sees annotated (through a partial it would pass None), streams only what is a generator function, and names
    the API endpoint after the function. The plain function returned here keeps all three."""
    if inspect.isgeneratorfunction(fn):
        def handler(*args):
            yield from fn(*bound, *args)
    else:
        def handler(*args):
            return fn(*bound, *args)
    functools.update_wrapper(handler, fn)
    signature = inspect.signature(fn)
    handler.__signature__ = signature.replace(parameters=list(signature.parameters.values())[len(bound):])
    return handler
