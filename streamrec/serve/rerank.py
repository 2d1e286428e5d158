"""A second stage for people who bring a pretrained text LLM: LlamaRec-style re-ranking of first-stage candidates.

The first stage (any ``Scorer``, e.g. ``serving.LMScorer``) proposes ``n_candidates`` items; one prompt per user
lists their recent history by title and the candidates under letters::

    The user interacted with these items, oldest first:
    - Hydrating face cream
    - ...
    Candidates:
    A. Matte lipstick, ruby
    B. ...
    Which candidate will the user interact with next? Answer:

and ONE forward pass over the (left-padded) batch of prompts gives, at the last position, the logit of each letter
token: candidate i's score is the logit of letter i (LlamaRec's verbalizer: no generation, no parsing, and every
candidate gets a score). Any Hugging Face causal LM works; it is loaded from a LOCAL directory only
(``local_files_only=True``: nothing is downloaded at serving time). The tokenizer must encode " A" ... after
"Answer:" as one token per letter, which every common LLM tokenizer does; the constructor checks it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from streamrec.scoring import ScoreRequest, Scored

log = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
HEADER = "The user interacted with these items, oldest first:"
CANDIDATES = "Candidates:"
QUESTION = "Which candidate will the user interact with next?"
ANSWER = "Answer:"


class LLMReranker:
    """Scorer protocol: re-rank ``first_stage``'s top ``n_candidates`` with a causal LM's letter logits."""

    name = "llm-rerank"

    def __init__(self, model_path: str | Path, titles: dict[str, str], first_stage: Any, n_candidates: int = 20, *,
                 device: str | None = None, dtype: torch.dtype | None = None, max_history: int = 10,
                 max_title_chars: int = 80, batch_size: int = 0, max_prompt_tokens: int | None = None):
        if not 1 <= n_candidates <= len(LETTERS):
            raise ValueError(f"n_candidates must be 1..{len(LETTERS)} (one letter each)")
        path = Path(model_path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: LLMReranker loads a local checkpoint directory (no downloads)")
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.first_stage = first_stage
        self.titles = dict(titles)
        self.n_candidates = n_candidates
        self.max_history = max_history
        self.max_title_chars = max_title_chars
        self.batch_size = batch_size   # 0: the whole batch in one forward pass
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        tok.padding_side = "left"        # the answer position is the last one of every row
        tok.truncation_side = "left"     # over-long prompts lose their oldest history, never the candidates
        if tok.pad_token is None:
            if tok.eos_token is None and tok.unk_token is None:
                raise ValueError(f"{path}: tokenizer has no pad, eos or unk token to pad with")
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
        self.tokenizer = tok
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        self.model.to(self.device).eval()
        limit = getattr(self.model.config, "max_position_embeddings", None) or 4096
        self.max_prompt_tokens = min(max_prompt_tokens or limit, limit)
        self.letter_ids = self._letter_tokens()
        cfg = path / "config.json"
        digest = hashlib.sha256(cfg.read_bytes() if cfg.is_file() else str(path).encode()).hexdigest()[:8]
        self.version = f"{getattr(first_stage, 'version', '?')}+{path.name}-{digest}"
        self.calls = 0

    def _letter_tokens(self) -> list[int]:
        base = self.tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
        ids = []
        for letter in LETTERS[: self.n_candidates]:
            full = self.tokenizer(f"{ANSWER} {letter}", add_special_tokens=False)["input_ids"]
            if full[: len(base)] != base or len(full) != len(base) + 1:
                raise ValueError(f"the tokenizer does not encode the answer letter {letter!r} as one token "
                                 f"after {ANSWER!r}: {full}")
            ids.append(full[-1])
        if len(set(ids)) != len(ids):
            raise ValueError("answer letters share tokens (letters missing from the tokenizer vocabulary?)")
        return ids

    # --- prompts ----------------------------------------------------------------------------------------------
    def title(self, item_id: str) -> str:
        t = " ".join(str(self.titles.get(item_id) or f"item {item_id}").split())
        return t if len(t) <= self.max_title_chars else t[: self.max_title_chars - 1] + "…"

    def prompt(self, history: Sequence[str], candidates: Sequence[str]) -> str:
        lines = [HEADER] + [f"- {self.title(i)}" for i in list(history)[-self.max_history:]] + [CANDIDATES]
        lines += [f"{LETTERS[n]}. {self.title(i)}" for n, i in enumerate(candidates)]
        return "\n".join(lines + [f"{QUESTION} {ANSWER}"])

    @torch.inference_mode()
    def letter_logits(self, prompts: list[str]) -> torch.Tensor:
        """[len(prompts), n_candidates]: each letter's logit at the answer position (one forward per batch)."""
        step = self.batch_size or len(prompts)
        out = []
        for start in range(0, len(prompts), step):
            enc = self.tokenizer(prompts[start:start + step], return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.max_prompt_tokens)
            ids = enc["input_ids"].to(self.device)
            mask = enc["attention_mask"].to(self.device)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)   # left padding must not shift the positions
            self.calls += 1
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False,
                                logits_to_keep=1).logits[:, -1, :]
            out.append(logits[:, self.letter_ids].float().cpu())
        return torch.cat(out)

    # --- Scorer protocol ----------------------------------------------------------------------------------------
    def score(self, requests: Sequence[ScoreRequest]) -> list[Scored]:
        first = self.first_stage.score([ScoreRequest(r.user_id, r.history, self.n_candidates, r.exclude)
                                        for r in requests])
        cands = [[i for i, _ in f.items if i not in r.exclude][: self.n_candidates]
                 for f, r in zip(first, requests)]
        rows = {j: n for n, j in enumerate(j for j, r in enumerate(requests) if cands[j] and r.k > 0)}
        scores = self.letter_logits([self.prompt(requests[j].history, cands[j]) for j in rows]) if rows else None
        out = []
        for j, (r, f) in enumerate(zip(requests, first)):
            items: list[tuple[str, float]] = []
            if j in rows:
                s = scores[rows[j], : len(cands[j])]
                order = sorted(range(len(cands[j])), key=lambda n: (-float(s[n]), n))   # ties: first-stage order
                items = [(cands[j][n], float(s[n])) for n in order][: max(0, r.k)]
            out.append(Scored(items, self.name, self.version, f.fallback, f.fallback_reason))
        return out

    def observe(self, history: Sequence[str], item_id: str) -> None:
        self.first_stage.observe(history, item_id)

    def on_item(self, item_id: str, record: dict | None) -> None:
        if record and record.get("title"):
            self.titles[item_id] = record["title"]
        if hasattr(self.first_stage, "on_item"):
            self.first_stage.on_item(item_id, record)
