"""Evaluation prompt sets: labelled (harmful / benign), categorised, split into validation and test.

File formats (UTF-8), one prompt per record:

- JSONL: one JSON object a line, e.g.
      {"prompt": "How do I kill a Python process?", "label": "benign", "category": "homonym", "split": "test"}
  Blank lines and lines starting with ``#`` are skipped.
- CSV: a header row naming the columns, then one row per prompt:
      prompt,label,category,split
      "How do I kill a Python process?",benign,homonym,test

Fields: ``prompt`` (non-empty text), ``label`` (``harmful`` or ``benign``), optional ``category`` (default
``uncategorized``), optional ``split`` (``validation`` or ``test``; when absent, :func:`assign_splits` gives one
deterministically, alternating within each (label, category) in the order of the prompts' hashes). Other fields are
ignored. Every problem is a ``ValueError`` naming the file and line ("prompts.jsonl:12: label must be ...").
A prompt may appear only once across all files given (the results cache is keyed by the prompt's text).

The built-in sets (data/benign.jsonl, data/harmful.jsonl) were written for this package: 150 benign prompts of the
kinds over-refusal benchmarks use (XSTest / OR-Bench style: safe contexts, homonyms, figurative language, safety
information, history and fiction, ...) and 150 harmful requests across the usual harm categories, none of them in
tsdi_kernels/demo/data (the alignment and the demo's held-out sets).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

LABELS = ("harmful", "benign")
SPLITS = ("validation", "test")
DEFAULT_CATEGORY = "uncategorized"
DATA_DIR = Path(__file__).resolve().parent / "data"
BUILTIN_FILES = (DATA_DIR / "benign.jsonl", DATA_DIR / "harmful.jsonl")
BUILTIN = "builtin"

PathLike = Union[str, os.PathLike]


def prompt_id(text: str) -> str:
    """Stable id of a prompt: the first 16 hex digits of sha1 of its UTF-8 text."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Prompt:
    text: str
    label: str  # "harmful" | "benign"
    category: str = DEFAULT_CATEGORY
    split: str = ""  # "validation" | "test" ("": not yet assigned, see assign_splits)
    source: str = ""  # "file:line", for messages

    @property
    def id(self) -> str:
        return prompt_id(self.text)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("source")
        return {"prompt": d.pop("text"), **d}


def _fail(source: str, message: str):
    raise ValueError(f"{source}: {message}")


def _record(raw: dict, source: str) -> tuple[str, str, str, Optional[str]]:
    """(text, label, category, split or None) of one raw record, validated."""
    if not isinstance(raw, dict):
        _fail(source, f"expected a JSON object with fields prompt, label[, category, split], got {type(raw).__name__}")
    missing = [k for k in ("prompt", "label") if k not in raw or raw[k] is None]
    if missing:
        _fail(source, f"missing field {' and '.join(repr(m) for m in missing)} (fields: prompt, label, "
                      f"optional category, split; found {sorted(raw)})")
    text = raw["prompt"]
    if not isinstance(text, str) or not text.strip():
        _fail(source, f"'prompt' must be non-empty text, got {text!r:.60}")
    label = raw["label"]
    if not isinstance(label, str) or label.strip().lower() not in LABELS:
        _fail(source, f"'label' must be 'harmful' or 'benign', got {label!r:.40}")
    category = raw.get("category")
    if category is None or (isinstance(category, str) and not category.strip()):
        category = DEFAULT_CATEGORY
    elif not isinstance(category, str):
        _fail(source, f"'category' must be text, got {category!r:.40}")
    split = raw.get("split")
    if split is None or (isinstance(split, str) and not split.strip()):
        split = None
    elif not isinstance(split, str) or split.strip().lower() not in SPLITS:
        _fail(source, f"'split' must be 'validation' or 'test' (or absent), got {split!r:.40}")
    else:
        split = split.strip().lower()
    return text.strip(), label.strip().lower(), category.strip(), split


def _read_jsonl(path: Path) -> list[tuple[dict, str]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            source = f"{path}:{number}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                _fail(source, f"not valid JSON ({exc.msg} at column {exc.colno})")
            out.append((raw, source))
    return out


def _read_csv(path: Path) -> list[tuple[dict, str]]:
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        if not header:
            _fail(f"{path}:1", "empty CSV file: expected a header row with columns prompt,label[,category,split]")
        names = [h.strip().lower() if h else h for h in header]
        for needed in ("prompt", "label"):
            if needed not in names:
                _fail(f"{path}:1", f"the header has no {needed!r} column (found {header}); expected columns "
                                   "prompt,label[,category,split]")
        for row in reader:
            source = f"{path}:{reader.line_num}"
            if None in row:  # more cells than header columns
                _fail(source, f"{len(header) + len(row[None])} cells, the header has {len(header)} "
                              "(quote a prompt that contains commas)")
            values = {(k.strip().lower() if k else k): v for k, v in row.items()}
            if all(not (v or "").strip() for v in values.values()):
                continue
            out.append((values, source))
    return out


def load_prompt_file(path: PathLike) -> list[Prompt]:
    """The prompts of one JSONL or CSV file (by extension: .csv is CSV, anything else JSONL), validated."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a prompt file")
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    try:
        raws = _read_csv(path) if path.suffix.lower() == ".csv" else _read_jsonl(path)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    items = []
    for raw, source in raws:
        text, label, category, split = _record(raw, source)
        items.append(Prompt(text, label, category, split or "", source))
    if not items:
        raise ValueError(f"{path}: no prompts in the file")
    return items


def assign_splits(items: Sequence[Prompt]) -> list[Prompt]:
    """Give every prompt without a split one: within each (label, category), ordered by prompt_id, alternately
    validation and test (validation first). Deterministic and independent of file order; prompts that have a
    split keep it."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, p in enumerate(items):
        if not p.split:
            groups.setdefault((p.label, p.category), []).append(i)
    out = list(items)
    for indices in groups.values():
        for rank, i in enumerate(sorted(indices, key=lambda j: items[j].id)):
            p = items[i]
            out[i] = Prompt(p.text, p.label, p.category, SPLITS[rank % 2], p.source)
    return out


def load_prompts(paths: Optional[Iterable[PathLike]] = None) -> list[Prompt]:
    """Prompts of the given files, or of the built-in sets when `paths` is None, empty or ["builtin"].

    ValueError on a bad record (naming file:line), a prompt that appears twice, or a set without both labels."""
    paths = list(paths or [])
    if not paths or paths == [BUILTIN]:
        paths = list(BUILTIN_FILES)
    items: list[Prompt] = []
    for path in paths:
        files = BUILTIN_FILES if str(path) == BUILTIN else (path,)
        for f in files:
            items += load_prompt_file(f)
    seen: dict[str, Prompt] = {}
    for p in items:
        key = p.text
        if key in seen:
            raise ValueError(f"{p.source}: duplicate prompt (also at {seen[key].source}): {p.text!r:.60}")
        seen[key] = p
    labels = {p.label for p in items}
    for label in LABELS:
        if label not in labels:
            raise ValueError(f"the prompt set ({', '.join(str(x) for x in paths)}) has no {label} prompt: both "
                             "labels are needed (benign for over-refusal, harmful for safety)")
    return assign_splits(items)


def summarize(items: Sequence[Prompt]) -> dict:
    """{label: {"n": n, "splits": {split: n}, "categories": {category: n}}}."""
    out: dict = {}
    for p in items:
        d = out.setdefault(p.label, {"n": 0, "splits": {}, "categories": {}})
        d["n"] += 1
        d["splits"][p.split] = d["splits"].get(p.split, 0) + 1
        d["categories"][p.category] = d["categories"].get(p.category, 0) + 1
    return out


def limit_prompts(prompts, limit: int):
    """At most `limit` prompts of each label, taken round-robin over the categories (in file order within each), so
    that a quick run still covers every category."""
    kept = []
    for label in ("benign", "harmful"):
        by_cat: dict = {}
        for p in prompts:
            if p.label == label:
                by_cat.setdefault(p.category, []).append(p)
        queues = list(by_cat.values())
        taken = 0
        while taken < limit and any(queues):
            for q in queues:
                if q and taken < limit:
                    kept.append(q.pop(0))
                    taken += 1
    order = {id(p): i for i, p in enumerate(prompts)}
    return sorted(kept, key=lambda p: order[id(p)])
