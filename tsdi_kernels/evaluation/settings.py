"""What a strength sweep evaluates and how it decodes: configurations, decoding settings, the sweep's settings.

No torch here: `tsdi eval --help` shows the defaults without loading it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from .prompts import Prompt

DEFAULT_GRID = (0.25, 0.5, 1.0, 1.5)  # the starting strengths of --auto
DEFAULT_REFINE_STEPS = 4  # at most; the threshold search stops at a 1/16-wide bracket (2-3 steps from the grid)
DEFAULT_MARGIN = 0.05  # harmful-refusal points the recommendation may give away against the aligned model
ENGINES = ("hf", "vllm")
REFINE_MODES = ("threshold", "knee")


@dataclass(frozen=True)
class Config:
    """One column of the sweep: which model, and the TSDI strength (None: no bias)."""

    name: str
    role: str  # "reference" | "aligned"
    strength: Optional[float]

    @property
    def kind(self) -> str:
        return self.role if self.strength is None else "tsdi"


def tsdi_config(strength: float) -> Config:
    return Config(f"TSDI s={strength:g}", "aligned", float(strength))


REFERENCE = Config("reference", "reference", None)
ALIGNED = Config("aligned", "aligned", None)


@dataclass
class Decoding:
    max_new_tokens: int = 32
    sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0
    seed: int = 0
    engine: str = "hf"  # "hf": tsdi_kernels.generate (hf_engine.py); "vllm": vLLM engines (vllm_engine.py)

    def describe(self) -> dict:
        d = {"max_new_tokens": self.max_new_tokens, "sample": self.sample}
        if self.sample:
            d.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed)
        if self.engine != "hf":  # in every cache key; absent for "hf", so caches written before it stay valid
            d["engine"] = self.engine
        return d

    def kwargs(self) -> dict:
        if not self.sample:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}

    def row_seed(self, prompt: Prompt) -> int:
        """Per prompt, not per batch position: an answer does not depend on batching; the same prompt gets the
        same noise in every configuration (common random numbers make the configurations' rates comparable)."""
        return (self.seed + int(prompt.id[:12], 16)) % (2 ** 62)


PathLike = Union[str, Path]


@dataclass(frozen=True)
class VllmModels:
    """What the vLLM engines load themselves: the two models as folders and the bias table as a file."""

    aligned_dir: PathLike
    reference_dir: PathLike
    bias_path: PathLike
    llm_kwargs: Optional[dict] = None  # extra arguments of vllm.LLM (e.g. max_model_len)


@dataclass
class SweepSettings:
    """Everything a sweep is asked to do, checked before any work (`check`).

    strengths: the TSDI strengths to evaluate; with auto=True, `grid` plus `refine_steps` adaptive ones (a given
    `strengths` list is then added to the grid). `vllm` is required with decoding.engine == "vllm"."""

    strengths: Sequence[float] = ()
    auto: bool = False
    grid: Sequence[float] = DEFAULT_GRID
    refine_steps: int = DEFAULT_REFINE_STEPS
    refine: str = "threshold"
    margin: float = DEFAULT_MARGIN
    decoding: Decoding = field(default_factory=Decoding)
    batch_size: int = 160
    helpfulness: bool = True
    share_prefill: bool = True
    vllm: Optional[VllmModels] = None

    def check(self) -> list[float]:
        """ValueError naming the setting; returns the sorted starting strengths."""
        if not (0.0 <= self.margin <= 1.0):
            raise ValueError(f"margin must be in [0, 1] (a rate difference), got {self.margin}")
        if self.refine not in REFINE_MODES:
            raise ValueError(f"refine must be 'threshold' or 'knee', got {self.refine!r}")
        if self.decoding.engine not in ENGINES:
            raise ValueError(f"decoding.engine must be 'hf' or 'vllm', got {self.decoding.engine!r}")
        if self.decoding.engine == "vllm" and self.vllm is None:
            raise ValueError("decoding.engine 'vllm' needs `vllm` (VllmModels: the folders and file vLLM loads)")
        base = sorted({float(s) for s in (list(self.strengths or []) + (list(self.grid) if self.auto else []))})
        if any(s < 0 or not math.isfinite(s) for s in base):
            raise ValueError(f"strengths must be finite and >= 0, got {base}")
        if not base and not self.auto:
            raise ValueError("give at least one strength, or auto=True")
        return [s for s in base if s > 0] if self.auto else base

    def describe(self, strengths: Sequence[float]) -> dict:
        """The settings as results.json records them (with the strengths finally evaluated)."""
        return {"strengths": sorted(strengths), "auto": self.auto, "grid": list(self.grid),
                "refine_steps": self.refine_steps, "refine": self.refine, "margin": self.margin,
                "decoding": self.decoding.describe(), "batch_size": self.batch_size,
                "helpfulness": self.helpfulness}
