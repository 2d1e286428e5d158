"""``TrainConfig``: every hyper-parameter of ``streamrec train``, as data (saved as ``train_config.json``).

Kept apart from ``train.py`` so that the CLI can build its flags without importing torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    from streamrec.model.itemlm import ItemLMConfig


@dataclass
class TrainConfig:
    """Defaults = the recipe of docs/evaluation.md: SASRec-style dropout 0.5 everywhere, batches of 6400 positions
    (128 windows of 50), Adam 1e-3 halved after every 3 validations without progress, early stopping after 10, the
    longest history from the data (``derive``), and (``streamrec train`` with ``--titles``) title embeddings.
    Dropout 0.5 is the setting of the published recipes for sparse data (a dozen interactions per item, as in every
    shared data set and the held-out one); nothing here was tuned on a test split (the batch in positions came from
    ml-latest-small's validation split, docs/evaluation.md)."""
    # --- model ---------------------------------------------------------------------------------------------------
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 0          # MLP width; 0 = 4 * hidden_size
    max_len: int = 0                    # longest history the model reads (and trains on); 0 = from the data
                                        #   (``derive``: the 99th percentile of training lengths, within 50..200)
    embedding_dropout: float = 0.5      # dropout on the item embeddings of the input sequence
    attention_dropout: float = 0.5      # dropout on the attention probabilities
    hidden_dropout: float = 0.5         # dropout on each attention / MLP output before the residual add (SASRec
                                        #   style; training-time forward hooks, the saved model is unchanged)
    id_dropout: float = 0.0             # share of items whose id embedding is dropped per step (text-only items:
                                        #   teaches a text-aware model to rank cold-start items); needs use_text
    initializer_range: float = 0.02
    use_text: bool = False              # add projected title embeddings (all-MiniLM-L6-v2, 384-d) to item embeddings
    text_model: str = ""                # "" = bundled all-MiniLM-L6-v2, or a local sentence-transformers directory
    # --- optimisation --------------------------------------------------------------------------------------------
    lr: float = 1e-3
    weight_decay: float = 0.0           # AdamW, on weight matrices and embeddings (not on norms)
    batch_size: int = 0                 # sequences per step; 0 = from max_len (``derive``): BATCH_POSITIONS
                                        #   positions per step, i.e. 128 windows of 50
    grad_clip: float = 1.0              # max gradient norm (0 = off)
    lr_patience: int = 3                # multiply the lr by lr_factor after every N evaluations without improvement
    lr_factor: float = 0.5              #   (0 = constant lr)
    epochs: int = 200
    patience: int = 10                  # stop after this many evaluations without a better validation NDCG@10
    eval_every: int = 1                 # validate every N epochs
    valid_users: int = 0                # validate each epoch on a fixed random sample of N users (0 = all)
    max_minutes: float = 0.0            # stop training after this much wall time (0 = no limit); test still runs
    seed: int = 42
    # --- data ----------------------------------------------------------------------------------------------------
    max_users: int = 0                  # use only N users (random, fixed by seed) for quick runs; 0 = all
    cold_items: float = 0.0             # cold-start experiment: hold out this share of items from training entirely
    # --- runtime -------------------------------------------------------------------------------------------------
    device: str = "cpu"                 # cpu, cuda or auto
    num_threads: int = 2                # torch CPU threads
    eval_batch_size: int = 512

    # SASRec's batch, 128 windows of 50, in positions: a fixed number of sequences per step would make an epoch of
    # long windows a few steps only (ml-latest-small at 200: 7 steps an epoch, and the lr halvings stopped it
    # under-trained; validation NDCG@10 0.054 against 0.070 with 32 windows per step).
    BATCH_POSITIONS = 128 * 50
    # fields that change how fast, not what is trained: left out of the version hash
    RUNTIME = ("device", "num_threads", "eval_batch_size")

    def model_config(self, n_items: int, text_dim: int = 0) -> "ItemLMConfig":
        from streamrec.model.itemlm import ItemLMConfig   # torch + transformers: only when a model is built
        return ItemLMConfig(
            n_items=n_items, text_dim=text_dim, embedding_dropout=self.embedding_dropout,
            hidden_size=self.hidden_size, intermediate_size=self.intermediate_size or 4 * self.hidden_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_heads, max_position_embeddings=self.max_len,
            attention_dropout=self.attention_dropout, initializer_range=self.initializer_range, use_cache=False)

    def derive(self, lengths: Sequence[int]) -> "TrainConfig":
        """The settings left to the data, resolved from the training sequences' ``lengths``: ``max_len`` 0 -> the
        99th percentile of the lengths, at least 50 (SASRec's length for the sparse Amazon sets: short histories
        lose nothing) and at most 200 (its MovieLens-1M length: beyond that the quadratic attention costs more than
        the oldest items tell); ``batch_size`` 0 -> ``BATCH_POSITIONS`` positions per step at that length."""
        cfg = self
        if not cfg.max_len:
            ordered = sorted(lengths) or [0]
            p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
            cfg = dataclasses.replace(cfg, max_len=int(min(200, max(50, -(-p99 // 10) * 10))))
        if not cfg.batch_size:
            cfg = dataclasses.replace(cfg, batch_size=max(8, round(self.BATCH_POSITIONS / cfg.max_len)))
        return cfg

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
