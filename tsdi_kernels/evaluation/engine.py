"""The one interface the sweep generates through; implemented by hf_engine.HFEngine (tsdi_kernels.generate) and
vllm_engine.VllmEngine (vLLM with TSDI as its logits processor). The sweep never branches on which one it has.

An engine holds the (aligned, reference) pair, the tokenizer, the bias table and the Decoding settings. It
answers with {"answer": text, "tokens": [ids]} per prompt, and scores answers by the reference model's mean
per-token log-likelihood (the helpfulness proxy). It counts its own time (`seconds`, per phase in `phases`) and
the answer tokens it produced (`tokens`).
"""
from __future__ import annotations

from typing import Optional, Protocol, Sequence

from .prompts import Prompt
from .settings import Config


class Engine(Protocol):
    tokenizer: object  # the HF tokenizer (prompt lengths for batching)
    seconds: float
    tokens: int
    phases: dict  # "prefill" | "generate" | "score" -> seconds

    def encode(self, prompts: Sequence[Prompt]) -> dict:
        """The chat-templated, left-padded batch: {"input_ids", "attention_mask"}."""

    def prefill(self, role: str, enc: dict):
        """The prompt cache of `role`'s model for the batch, shared by its configurations (None: none kept)."""

    def generate_many(self, configs: Sequence[Config], prompts: Sequence[Prompt], enc: dict, cache=None,
                      batch_size: int = 160) -> dict:
        """{config name: [{"answer", "tokens"}] per prompt} for configurations of one model on one batch."""

    def score(self, enc: dict, rows: Sequence[int], answers: Sequence[Sequence[int]],
              cache=None) -> list[Optional[float]]:
        """The reference's mean per-token log-likelihood of each answer after prompt row rows[i] (None: empty)."""

    def close(self) -> None:
        """Release what the engine started (processes, memory); the models belong to the caller."""
