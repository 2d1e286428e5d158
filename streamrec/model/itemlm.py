"""The item language model: a Llama-style decoder over item tokens that scores every item as the next one.

Read it in one sitting:
  * tokens are items: id 0 is padding, ids 1..n are items from ``vocab.json`` (``ItemVocab``);
  * an item's embedding = its learned id embedding + a projection of its text embedding (title/description through
    the all-MiniLM-L6-v2 sentence encoder, see ``text.py``), so a brand-new item with a title but no interactions
    already has a meaningful embedding (cold start);
  * a ``transformers`` ``LlamaModel`` reads the history (left-padded, causal) and its last hidden state is dotted with
    every item embedding (tied input/output embeddings) to give next-item logits.
Standard artefacts: ``save_pretrained``/``from_pretrained`` directories with ``config.json``, ``model.safetensors``
and ``vocab.json`` (``vocab.py``; ``table.py`` reads the item table from them without torch).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel, PreTrainedModel

from streamrec.model.vocab import PAD, ItemVocab   # noqa: F401  (re-exported: the vocabulary is torch-free)


class ItemLMConfig(LlamaConfig):
    model_type = "streamrec-item-lm"

    def __init__(self, n_items: int = 1, text_dim: int = 0, embedding_dropout: float = 0.0, **kwargs):
        kwargs.setdefault("vocab_size", n_items + 1)
        kwargs.setdefault("pad_token_id", PAD)
        kwargs.setdefault("tie_word_embeddings", False)
        kwargs.setdefault("bos_token_id", None)
        kwargs.setdefault("eos_token_id", None)
        super().__init__(**kwargs)
        self.n_items = n_items
        self.text_dim = text_dim
        self.embedding_dropout = embedding_dropout


class ItemLM(PreTrainedModel):
    config_class = ItemLMConfig
    base_model_prefix = "backbone"
    _supports_sdpa = True

    def __init__(self, config: ItemLMConfig):
        super().__init__(config)
        n = config.n_items + 1
        self.item_emb = nn.Embedding(n, config.hidden_size, padding_idx=PAD)
        if config.text_dim:
            # Frozen sentence embeddings of the item texts (a buffer, saved with the weights) and a learned projection.
            self.register_buffer("item_text", torch.zeros(n, config.text_dim), persistent=True)
            self.text_proj = nn.Linear(config.text_dim, config.hidden_size, bias=False)
        self.drop = nn.Dropout(config.embedding_dropout)
        self.backbone = LlamaModel(config)
        self.backbone.embed_tokens = None   # we feed inputs_embeds; the backbone's own table would be dead weight
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif hasattr(module, "weight") and module.__class__.__name__.endswith("RMSNorm"):
            nn.init.ones_(module.weight)

    def item_embeddings(self, tokens: Sequence[int] | None = None) -> torch.Tensor:
        """[n_items + 1, hidden]: the table used both to read histories and to score candidates; with ``tokens``
        only those rows (what serving appends for cold-start items instead of recomputing the table)."""
        if tokens is None:
            w, text = self.item_emb.weight, getattr(self, "item_text", None)
        else:
            idx = torch.as_tensor(list(tokens), dtype=torch.long, device=self.item_emb.weight.device)
            w, text = self.item_emb.weight[idx], (self.item_text[idx] if self.config.text_dim else None)
        if self.config.text_dim:
            w = w + self.text_proj(text)
        return w

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        table = self.item_embeddings()
        x = self.drop(nn.functional.embedding(input_ids, table))
        # Left padding: positions count from each sequence's first real token.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.backbone(inputs_embeds=x, attention_mask=attention_mask, position_ids=position_ids)
        return out.last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-item logits after the last position of each (left-padded) sequence: [batch, n_items + 1].

        Index i is the score of item token i; index 0 (padding) is -inf. This is the serving/export signature.
        """
        if attention_mask is None:
            attention_mask = (input_ids != PAD).long()
        h = self.hidden_states(input_ids, attention_mask)[:, -1]
        logits = h @ self.item_embeddings().T
        return logits.masked_fill(torch.arange(logits.shape[-1], device=logits.device) == PAD, float("-inf"))

    @torch.no_grad()
    def set_item_text(self, token_ids: Sequence[int], embeddings) -> None:
        if not self.config.text_dim:
            raise ValueError("this model was trained without item text (text_dim=0)")
        rows = torch.as_tensor(list(token_ids), dtype=torch.long)
        self.item_text[rows] = torch.as_tensor(embeddings).to(self.item_text)   # a tensor or an array

    @torch.no_grad()
    def add_items(self, count: int) -> range:
        """Grow the item table by ``count`` cold-start items (zero id embedding; text via ``set_item_text``)."""
        old = self.config.n_items + 1
        new = old + count
        emb = nn.Embedding(new, self.config.hidden_size, padding_idx=PAD).to(self.item_emb.weight)
        emb.weight.zero_()
        emb.weight[:old] = self.item_emb.weight
        self.item_emb = emb
        if self.config.text_dim:
            text = torch.zeros(new, self.config.text_dim, device=self.item_text.device)
            text[:old] = self.item_text
            self.item_text = text
        self.config.n_items += count
        self.config.vocab_size = new
        return range(old, new)


def left_pad(histories: Sequence[Sequence[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch token histories into left-padded ``input_ids``/``attention_mask`` of the longest one (<= max_len)."""
    width = max(1, min(max_len, max((len(h) for h in histories), default=1)))
    ids = torch.zeros(len(histories), width, dtype=torch.long)
    for row, h in enumerate(histories):
        h = list(h)[-width:]
        if h:
            ids[row, width - len(h):] = torch.as_tensor(h, dtype=torch.long)
    return ids, (ids != PAD).long()
