"""Named outputs: each event's outputs listed once, in order; handlers fill them by name.

A handler takes the `Context` first, then the event's inputs, and returns (or yields) a dict of
output name -> value, leaving out what it does not change. `Wiring` binds it to the components:
Gradio gets a tuple in the registry's order, gr.skip() for every name left out.
"""
from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence

import gradio as gr


class Outputs:
    """One event's outputs by name, in the order Gradio sends them."""

    def __init__(self, names: Iterable[str], unlisted: Iterable[str] = ()):
        self.names = tuple(names)
        self.unlisted = frozenset(unlisted)      # buttons: Gradio leaves them out of an API result
        assert self.unlisted <= set(self.names) and len(set(self.names)) == len(self.names)

    @property
    def api(self) -> tuple[str, ...]:
        """The names of the values an API client (gradio_client) receives, in its order."""
        return tuple(name for name in self.names if name not in self.unlisted)

    def index(self, name: str) -> int:
        """Where `name` is in an API client's result."""
        return self.api.index(name)

    def values(self, update: Mapping[str, object]):
        """The update as Gradio takes it: one value per output, in order (a lone output: the value itself)."""
        unknown = set(update) - set(self.names)
        if unknown:
            raise KeyError(f"not outputs of this event: {sorted(unknown)}")
        values = tuple(update[name] if name in update else gr.skip() for name in self.names)
        return values[0] if len(values) == 1 else values


def bind(handler: Callable, ctx, outputs: Outputs) -> Callable:
    """`handler(ctx, *inputs)` as Gradio calls it: `fn(*inputs)`, with the handler's name, docstring and
    parameters (Gradio reads them for the API page), returning `outputs.values` of each update."""
    if inspect.isgeneratorfunction(handler):
        def fn(*inputs):
            updates = handler(ctx, *inputs)
            try:
                for update in updates:
                    yield outputs.values(update)
            finally:
                updates.close()         # a closed page closes fn: the handler's cleanup runs now, not at GC
    else:
        def fn(*inputs):
            return outputs.values(handler(ctx, *inputs))
    fn.__name__, fn.__qualname__, fn.__doc__ = handler.__name__, handler.__qualname__, handler.__doc__
    fn.__signature__ = inspect.signature(handler).replace(
        parameters=list(inspect.signature(handler).parameters.values())[1:])
    # resolved, so that Gradio sees a `request: gr.Request` parameter and passes the request in
    hints = typing.get_type_hints(handler)
    fn.__annotations__ = {name: hint for name, hint in hints.items() if name in fn.__signature__.parameters
                          or name == "return"}
    return fn


class Wiring:
    """Connects a tab's handlers to its components, both by name."""

    def __init__(self, ctx, components: Mapping[str, gr.components.Component]):
        self.ctx, self.components = ctx, components

    def __call__(self, listener, handler: Callable, inputs: Sequence[str], outputs: Outputs, **options):
        """`listener(...)` (e.g. `button.click`, `event.then`) with `handler` bound; returns the event."""
        if options.get("api_visibility") != "private":       # API clients index the result by the registry
            skipped = {name for name in outputs.names if self.components[name].skip_api}
            assert skipped == outputs.unlisted, f"Gradio leaves {sorted(skipped)} out of the API result"
        return listener(bind(handler, self.ctx, outputs), [self.components[name] for name in inputs],
                        [self.components[name] for name in outputs.names], **options)


# the outputs of one variant's column, by the variant's name (the Compare tab's, and its replay's)
def card(name: str) -> str:
    return f"card:{name}"


def answer(name: str) -> str:
    return f"answer:{name}"


def column(name: str) -> str:
    return f"column:{name}"
