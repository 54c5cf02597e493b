"""Refusal judges: which answers count as refusals.

The default judge is the documented string rules of refusal.py (a refusal opener in the
first sentence, or a first-person refusal phrase anywhere), the compliance-rate rule of XSTest / OR-Bench style
evaluations. Any other rule plugs in as a callable:

    judge(answer: str) -> bool | str | None                  # one parameter: the answer
    judge(answer: str, prompt: str) -> bool | str | None     # two: the answer and the user prompt

A true value (or a non-empty string, taken as the reason) marks a refusal. On the command line, ``--judge
module:function`` imports `function` from an importable module, ``--judge path/to/file.py:function`` from a file.

Answers are cached, verdicts are not: changing the judge re-judges cached answers without generating again.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from typing import Callable, Optional, Union

DEFAULT = "builtin"


class Judge:
    """A refusal rule: ``judge(answer, prompt) -> reason or None``; ``judge.name`` says which rule it is."""

    def __init__(self, fn: Callable, name: str):
        if not callable(fn):
            raise ValueError(f"judge {name!r} is not callable")
        self.fn = fn
        self.name = name
        self._with_prompt = _takes_two(fn)

    def __call__(self, answer: str, prompt: str = "") -> Optional[str]:
        verdict = self.fn(answer, prompt) if self._with_prompt else self.fn(answer)
        if isinstance(verdict, str):
            return verdict or None
        if verdict is None or verdict is False:
            return None
        if verdict is True:
            return self.name
        try:
            return self.name if bool(verdict) else None
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"judge {self.name} returned {verdict!r:.40}, expected bool, str or None") from exc

    def __repr__(self) -> str:
        return f"Judge({self.name})"


def _takes_two(fn: Callable) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return True
    return len(positional) >= 2


def default_judge() -> Judge:
    from .refusal import refusal_reason

    return Judge(refusal_reason, "tsdi_kernels.evaluation.refusal:refusal_reason")


def load_judge(spec: Union[None, str, Callable] = None) -> Judge:
    """A Judge from None / "builtin" (the default rule), a callable, "module:function" or "file.py:function".

    ValueError (naming the spec) when the module, file or function cannot be found or is not callable."""
    if spec is None or spec == DEFAULT:
        return default_judge()
    if isinstance(spec, Judge):
        return spec
    if callable(spec):
        return Judge(spec, getattr(spec, "__qualname__", None) or repr(spec))
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"--judge: expected 'builtin', 'module:function' or 'path/to/file.py:function', "
                         f"got {spec!r}")
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise ValueError(f"--judge: expected 'module:function' or 'file.py:function', got {spec!r}")
    if where.endswith(".py") or os.sep in where or "/" in where:
        if not os.path.isfile(where):
            raise ValueError(f"--judge: no such file: {where!r}")
        module_name = "tsdi_user_judge_" + os.path.splitext(os.path.basename(where))[0]
        loader_spec = importlib.util.spec_from_file_location(module_name, where)
        if loader_spec is None or loader_spec.loader is None:
            raise ValueError(f"--judge: cannot import {where!r} as a Python file")
        module = importlib.util.module_from_spec(loader_spec)
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001  (a user's file: report it in one line)
            raise ValueError(f"--judge: importing {where!r} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(where)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"--judge: cannot import module {where!r}: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, name, None)
    if fn is None:
        raise ValueError(f"--judge: {where!r} has no attribute {name!r}")
    if not callable(fn):
        raise ValueError(f"--judge: {spec!r} is not callable")
    return Judge(fn, spec)
