"""The sweep's answer cache: a JSONL file of per-(configuration, prompt) results, keyed by everything that
determines an answer (model and bias fingerprints, strength, decoding settings), so an interrupted run continues
where it stopped and a rerun with more strengths generates only what is new."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from .settings import Config, Decoding

CACHE_FILE = "cache.jsonl"
CACHE_VERSION = 1


def model_fingerprint(model) -> str:
    """Name plus a checksum of a few weights: a different model in the same output folder is not mistaken for it."""
    h = hashlib.sha1(str(getattr(model, "name_or_path", "") or type(model).__name__).encode())
    params = [p for p in model.parameters()]
    with torch.no_grad():
        for p in params[:2] + params[-2:]:
            flat = p.detach().reshape(-1)
            h.update(f"{tuple(p.shape)}:{float(flat.double().sum()):.10e}:{float(flat[:64].double().abs().sum()):.10e}"
                     .encode())
    return h.hexdigest()[:16]


def bias_fingerprint(bias: torch.Tensor) -> str:
    """sha1 of the [L, V] table's float32 bytes."""
    data = bias.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha1(data).hexdigest()[:16]


def config_key(config: Config, *, models: dict, bias_fp: Optional[str], decoding: Decoding) -> str:
    """Everything that determines an answer, hashed: model, bias table, strength, decoding settings."""
    blob = json.dumps({"v": CACHE_VERSION, "model": models[config.role], "strength": config.strength,
                       "bias": bias_fp if config.strength is not None else None, "decoding": decoding.describe()},
                      sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class ResultCache:
    """Append-only JSONL of per-(configuration, prompt) results; a torn last line (interrupted write) is ignored.

    Appends, not atomic rewrites: each batch adds its lines and fsyncs, so a crash loses at most the batch in
    flight, and a torn last line is skipped on reading."""

    def __init__(self, path: Optional[Path]):
        self.path = Path(path) if path is not None else None
        self.records: dict[tuple[str, str], dict] = {}
        self.skipped = 0
        if self.path is not None and self.path.is_file():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        self.records[(rec["config"], rec["prompt_id"])] = rec
                    except (json.JSONDecodeError, KeyError, TypeError):
                        self.skipped += 1

    def get(self, key: str, pid: str) -> Optional[dict]:
        return self.records.get((key, pid))

    def has(self, key: str, pid: str) -> bool:
        return (key, pid) in self.records

    def add(self, recs: Sequence[dict]) -> None:
        new = [r for r in recs if (r["config"], r["prompt_id"]) not in self.records]
        for r in new:
            self.records[(r["config"], r["prompt_id"])] = r
        if self.path is not None and new:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new))
                f.flush()
                os.fsync(f.fileno())
