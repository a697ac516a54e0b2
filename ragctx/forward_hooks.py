"""Forward hooks that belong to one caller, on a model that many callers share.

A hook registered on a shared module fires for every forward through it, from any thread: two requests
capturing attention at once read each other's tensors, stop each other's forwards and mix shapes (the
500s of concurrent `ehpc` / `attention-sort` requests). Instead, each module gets one permanent
dispatcher, installed on first use, and a caller's hooks live in a context variable: a forward sees only
the hooks of the context (the thread or task) that runs it, so concurrent forwards never meet.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from torch import nn

PreHook = Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], None]
PostHook = Callable[[nn.Module, tuple[Any, ...], Any], Any]

# Read-only empty defaults: a context's hooks are replaced whole, never edited in place.
_PRE: ContextVar[Mapping[int, PreHook]] = ContextVar("ragctx_pre_hooks", default=MappingProxyType({}))
_POST: ContextVar[Mapping[int, PostHook]] = ContextVar("ragctx_post_hooks", default=MappingProxyType({}))
_install = threading.Lock()
_PRE_FLAG = "_ragctx_pre_dispatch"
_POST_FLAG = "_ragctx_post_dispatch"


def _dispatch_pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    hook = _PRE.get().get(id(module))
    if hook is not None:
        hook(module, args, kwargs)


def _dispatch_post(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    hook = _POST.get().get(id(module))
    return hook(module, args, output) if hook is not None else None


def _ensure(module: nn.Module, flag: str) -> None:
    if module.__dict__.get(flag):
        return
    with _install:
        if module.__dict__.get(flag):
            return
        if flag == _PRE_FLAG:
            module.register_forward_pre_hook(_dispatch_pre, with_kwargs=True)
        else:
            module.register_forward_hook(_dispatch_post)
        module.__dict__[flag] = True


@contextlib.contextmanager
def _in_context(var: ContextVar[Mapping[int, Any]], flag: str, hooks: Mapping[nn.Module, Any]) -> Iterator[None]:
    for module in hooks:
        _ensure(module, flag)
    token = var.set({**var.get(), **{id(m): h for m, h in hooks.items()}})
    try:
        yield
    finally:
        var.reset(token)


def pre_hooks(hooks: Mapping[nn.Module, PreHook]) -> contextlib.AbstractContextManager[None]:
    """Within the block, forwards run by this context call `hooks[module](module, args, kwargs)` before
    `module`; other threads' forwards through the same modules do not."""
    return _in_context(_PRE, _PRE_FLAG, hooks)


def post_hooks(hooks: Mapping[nn.Module, PostHook]) -> contextlib.AbstractContextManager[None]:
    """Within the block, forwards run by this context replace `module`'s output by
    `hooks[module](module, args, output)` (None keeps it)."""
    return _in_context(_POST, _POST_FLAG, hooks)
