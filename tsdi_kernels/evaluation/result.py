"""A sweep's result: every (configuration, prompt) record and the per-configuration summary (refusal rates with 95%
Wilson intervals overall, per split and per category; the helpfulness proxy: the reference model's mean per-token
log-likelihood of the answers to benign prompts)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from .prompts import LABELS, SPLITS, Prompt, summarize
from .settings import Config
from .stats import Rate, mean_interval


@dataclass
class SweepResult:
    configs: list  # [Config]
    prompts: list  # [Prompt]
    records: dict  # (config name, prompt id) -> record (answer, tokens, loglik, refusal)
    keys: dict  # config name -> cache key
    settings: dict
    judge: str
    recommendation: dict = field(default_factory=dict)
    summary: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    refinement: list = field(default_factory=list)

    def to_json(self) -> dict:
        answers = {}
        for c in self.configs:
            answers[c.name] = [{"prompt": p.text, "label": p.label, "category": p.category, "split": p.split,
                                "answer": self.records[(c.name, p.id)]["answer"],
                                "refusal": self.records[(c.name, p.id)]["refusal"],
                                "loglik": self.records[(c.name, p.id)].get("loglik")} for p in self.prompts]
        return {"settings": self.settings, "judge": self.judge, "prompts": summarize(self.prompts),
                "summary": self.summary, "recommendation": self.recommendation, "refinement": self.refinement,
                "timings_s": self.timings, "answers": answers}


def rates(records: dict, config: Config, prompts: Sequence[Prompt], label: str,
          split: Optional[str] = None, category: Optional[str] = None) -> Rate:
    sel = [p for p in prompts if p.label == label and (split is None or p.split == split)
           and (category is None or p.category == category)]
    return Rate(sum(records[(config.name, p.id)]["refusal"] is not None for p in sel), len(sel))


def summarize_config(records: dict, config: Config, prompts: Sequence[Prompt]) -> dict:
    out = {"config": config.name, "kind": config.kind, "strength": config.strength}
    for label in LABELS:
        cats = sorted({p.category for p in prompts if p.label == label})
        out[label] = {
            "all": rates(records, config, prompts, label).to_dict(),
            **{split: rates(records, config, prompts, label, split).to_dict() for split in SPLITS},
            "by_category": {c: rates(records, config, prompts, label, category=c).to_dict() for c in cats},
        }
    benign = [p for p in prompts if p.label == "benign"]
    ll = [records[(config.name, p.id)].get("loglik") for p in benign]
    ll_ok = [x for x in ll if x is not None]
    comply = [records[(config.name, p.id)].get("loglik") for p in benign
              if records[(config.name, p.id)]["refusal"] is None]
    out["benign_loglik"] = mean_interval(ll_ok)
    out["benign_loglik_compliant"] = mean_interval([x for x in comply if x is not None])
    out["mean_answer_tokens"] = round(sum(len(records[(config.name, p.id)]["tokens"]) for p in prompts)
                                      / max(1, len(prompts)), 2)
    return out
