"""Training loop of the item language model (kept apart from the model, nanoGPT style).

Recipe ("SASRec with cross-entropy"): every user's ``items[:-2]`` is a training sequence; at every position the model
predicts the next item with a **full softmax over all items** (no sampled negatives). The second-to-last item of each
user is the validation target (early stopping on full-ranking NDCG@10), the last one the test target (reported once,
with the best checkpoint). See ``evaluate.py`` and ``docs/evaluation.md`` for the protocol.

CPU efficiency: sequences are short (Beauty: 9 items on average), so batches are made of sequences of similar length
(bucketing: little padding), and logits are computed only at real (non-padding) positions.

Artefacts in ``out_dir``::

    model/               ItemLM.save_pretrained + vocab.json (the best epoch by validation NDCG@10), and
                         blend.json: the co-occurrence weight of the served ranking, chosen on validation (blend.py)
    train_config.json    TrainConfig + version + data summary
    metrics.json         per-epoch history, best epoch, final validation and test metrics (all users) of the served
                         ranking (``test``) and of the LM alone (``test_lm_only``), timings
    valid_ndcg.png       validation NDCG@10 (and training loss) per epoch
    checkpoint.pt        last epoch's model + optimiser + RNG state (``resume=True`` continues from it)
    cooc.json            a co-occurrence scorer fitted on every training user's full sequence: the serving
                         fallback starts from it (``serve/lm.build_lm_scorer``) instead of from nothing
    popularity.json      {item_id: count} over the same sequences: the serving prior for empty histories
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

import torch

from streamrec.model.blend import blend_parts, blend_record, blend_score_fn, choose_weights, last_batch, save_blend
from streamrec.model.evaluate import build_vocab, evaluate, evaluate_many, leave_one_out, lm_score_fn, train_sequences
from streamrec.model.itemlm import PAD, ItemLM, ItemVocab
from streamrec.model.train_config import TrainConfig
from streamrec.scoring import CooccurrenceScorer

log = logging.getLogger(__name__)


# --- data ------------------------------------------------------------------------------------------------------------
def data_fingerprint(sequences: Mapping[str, Sequence[str]]) -> str:
    h = hashlib.sha1()
    for user in sorted(sequences):
        h.update(user.encode())
        h.update(b":")
        h.update(" ".join(sequences[user]).encode())
        h.update(b"\n")
    return h.hexdigest()[:12]


def make_version(cfg: TrainConfig, fingerprint: str) -> str:
    payload = {k: v for k, v in cfg.as_dict().items() if k not in TrainConfig.RUNTIME}
    h = hashlib.sha1((json.dumps(payload, sort_keys=True) + fingerprint).encode()).hexdigest()[:10]
    return f"itemlm-{h}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"


def select_users(sequences: Mapping[str, Sequence[str]], max_users: int, seed: int) -> dict[str, list[str]]:
    users = list(sequences)
    if max_users and max_users < len(users):
        users = sorted(random.Random(seed).sample(users, max_users), key=users.index)
    return {u: list(sequences[u]) for u in users}


def pick_cold_items(sequences: Mapping[str, Sequence[str]], share: float, seed: int) -> set[str]:
    items = sorted({i for s in sequences.values() for i in s}, key=lambda x: (len(x), x))
    n = int(round(share * len(items)))
    return set(random.Random(seed + 7919).sample(items, n)) if n else set()


def training_windows(token_seqs: Sequence[Sequence[int]], max_len: int) -> list[list[int]]:
    """Cut each sequence into windows of at most max_len + 1 tokens (inputs = w[:-1], targets = w[1:]).

    Windows are taken from the end backwards and share one token, so every item of a long sequence is a target
    exactly once; most sequences are shorter than max_len + 1 and give one window.
    """
    out = []
    for seq in token_seqs:
        seq = list(seq)
        end = len(seq)
        while end >= 2:
            start = max(0, end - max_len - 1)
            out.append(seq[start:end])
            end = start + 1
            if start == 0:
                break
    return out


def length_batches(windows: Sequence[Sequence[int]], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices of windows grouped by length (random order inside a length), batches in random order."""
    keys = [(len(w), rng.random()) for w in windows]
    order = sorted(range(len(windows)), key=keys.__getitem__)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


class _FullSoftmaxCE(torch.autograd.Function):
    """mean_i CE(softmax(h_i . table^T), target_i) over all items, padding (column 0) excluded — computed in row
    chunks so the [chunk, n_items] logits stay in cache; the gradients are formed in the same pass.

    Same value and gradients as ``cross_entropy(h @ table.T, targets)`` (tested), ~4x faster on CPU for 12k items,
    and it never materialises the full [positions, n_items] matrix.
    """

    @staticmethod
    def forward(ctx, h, table, targets, chunk: int):
        n = h.shape[0]
        grad_h = torch.empty_like(h)
        grad_table = torch.zeros_like(table)
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        rows = torch.arange(min(chunk, n), device=h.device)
        for s in range(0, n, chunk):
            hc, tc = h[s:s + chunk], targets[s:s + chunk]
            r = rows[:hc.shape[0]]
            logits = hc @ table.T
            logits[:, PAD] = float("-inf")
            lse = torch.logsumexp(logits, dim=1)
            total += (lse - logits[r, tc]).sum(dtype=torch.float64)
            probs = logits.sub_(lse[:, None]).exp_()          # softmax, in place
            probs[r, tc] -= 1.0                               # d CE / d logits = softmax - onehot
            torch.mm(probs, table, out=grad_h[s:s + chunk])
            grad_table.addmm_(probs.T, hc)
        ctx.save_for_backward(grad_h, grad_table)
        ctx.n = n
        return (total / n).to(h.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_table = ctx.saved_tensors
        scale = grad_out / ctx.n
        return grad_h * scale, grad_table * scale, None, None


def full_softmax_ce(h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Mean cross-entropy of ``h @ table.T`` (padding column excluded) against ``targets``; h: [n, d]."""
    return _FullSoftmaxCE.apply(h, table, targets, chunk)


def pad_windows(windows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded (input_ids, attention_mask, targets) of windows: inputs = w[:-1], targets = w[1:]."""
    import numpy as np

    width = max(len(w) for w in windows) - 1
    ids = np.zeros((len(windows), width + 1), dtype=np.int64)
    for row, w in enumerate(windows):
        ids[row, width + 1 - len(w):] = w
    ids_t = torch.from_numpy(ids)
    inputs, targets = ids_t[:, :-1], ids_t[:, 1:]
    mask = (inputs != PAD) & (targets != PAD)
    return inputs.contiguous(), mask.long(), targets.contiguous()


def next_item_loss(model: ItemLM, windows: Sequence[Sequence[int]], device,
                   id_dropout: float = 0.0) -> tuple[torch.Tensor, int]:
    """Mean full-softmax cross-entropy of next-item prediction over the real positions of a batch.

    ``id_dropout``: for this step, a random share of the items lose their learned id embedding (in the history and
    as candidates) and are represented by their text alone — the situation of a cold-start item, which the model
    otherwise never sees in training. Uses only the documented fact that an item's embedding is its id embedding
    plus a text term (``ItemLM.item_embeddings``).
    """
    ids, mask, tgt = (t.to(device) for t in pad_windows(windows))
    if id_dropout and model.training:
        weight = model.item_emb.weight
        dropped = (torch.rand(weight.shape[0], 1, device=weight.device) < id_dropout).to(weight.dtype)
        table = type(model).item_embeddings(model) - weight * dropped
        model.item_embeddings = lambda: table        # the same table for reading the history and for scoring
        try:
            h = model.hidden_states(ids, mask)
        finally:
            del model.item_embeddings
    else:
        h = model.hidden_states(ids, mask)
        table = model.item_embeddings()
    sel = mask.bool()
    return full_softmax_ce(h[sel], table, tgt[sel]), int(sel.sum())


def add_hidden_dropout(model: ItemLM, p: float) -> list:
    """SASRec-style residual dropout for the Llama blocks (which have none): dropout on the output of every
    self-attention and MLP sub-layer, active only in training mode. Forward hooks, so ``model.py`` and the saved
    weights are untouched; returns the hook handles."""
    if not p:
        return []
    F = torch.nn.functional

    def attn_hook(module, args, output):
        return (F.dropout(output[0], p, module.training),) + tuple(output[1:])

    def mlp_hook(module, args, output):
        return F.dropout(output, p, module.training)

    handles = []
    for layer in model.backbone.layers:
        handles.append(layer.self_attn.register_forward_hook(attn_hook))
        handles.append(layer.mlp.register_forward_hook(mlp_hook))
    return handles


def _optimizer(model: ItemLM, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch sees no GPU")
    return torch.device(device)


def save_model_dir(model: ItemLM, vocab: ItemVocab, directory: Path) -> None:
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    vocab.save(tmp)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


def grow_vocab(init_from: str | Path, data_vocab: ItemVocab) -> tuple[ItemLM, ItemVocab]:
    """The previous model and its vocabulary with the data's new items appended (old token ids unchanged)."""
    model, vocab = load_model_dir(init_from)
    for item in data_vocab.items[1:]:
        vocab.add(item)
    return model, vocab


def load_model_dir(directory: str | Path, device="cpu") -> tuple[ItemLM, ItemVocab]:
    """An artefact directory (``out/``) or its ``model/`` subdirectory -> (model in eval mode, vocab)."""
    directory = Path(directory)
    if not (directory / "config.json").is_file() and (directory / "model" / "config.json").is_file():
        directory = directory / "model"
    model = ItemLM.from_pretrained(directory).to(device).eval()
    return model, ItemVocab.load(directory)


def plot_history(history: list[dict], path: Path, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = [h for h in history if "valid" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([h["epoch"] for h in ev], [h["valid"]["NDCG@10"] for h in ev], "o-", ms=3, color="C0",
            label="validation NDCG@10")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation NDCG@10 (full ranking)", color="C0")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot([h["epoch"] for h in history], [h["loss"] for h in history], color="C1", alpha=0.7, label="train loss")
    ax2.set_ylabel("training cross-entropy", color="C1")
    if ev:
        best = max(ev, key=lambda h: h["valid"]["NDCG@10"])
        ax.axvline(best["epoch"], color="gray", ls="--", lw=0.8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the loop --------------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, sequences: Mapping[str, Sequence[str]], out_dir: str | Path,
          titles: Mapping[str, str] | None = None, resume: bool = False, progress: bool = True,
          dataset_name: str = "", init_from: str | Path | None = None) -> dict:
    """Train, early-stop on validation NDCG@10, test the best epoch on all users; returns metrics.json's content.

    ``init_from``: a previous ``streamrec train`` output to continue from (learning from new interactions): its
    weights and vocabulary are kept, items it has never seen are appended (new rows), and the architecture is the
    previous model's (``cfg``'s model sizes are ignored). The output is a new version (new data fingerprint).
    """
    from tqdm.auto import tqdm

    if cfg.id_dropout and not cfg.use_text:
        raise ValueError("id_dropout needs use_text (an item without its id embedding would have no embedding)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    ckpt = None
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        saved = TrainConfig.from_dict(ckpt["config"])
        # a resumed run keeps everything but the schedule length / runtime knobs from the original run
        keep = {"epochs", "patience", "max_minutes", "device", "num_threads", "eval_batch_size"}
        cfg = dataclasses.replace(saved, **{k: getattr(cfg, k) for k in keep})

    torch.set_num_threads(cfg.num_threads)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()             # "Writing model shards" bars at every best epoch
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    seqs = select_users(sequences, cfg.max_users, cfg.seed)
    fingerprint = data_fingerprint(seqs)
    cold = pick_cold_items(seqs, cfg.cold_items, cfg.seed) if cfg.cold_items else set()
    warm_seqs = {u: [i for i in s if i not in cold] for u, s in seqs.items()} if cold else seqs
    vocab = build_vocab(warm_seqs)
    previous = None
    if init_from is not None and ckpt is None:
        previous, vocab = grow_vocab(init_from, vocab)
    train_part = train_sequences(seqs)            # items[:-2] of every user
    if cold:
        train_part = {u: [i for i in s if i not in cold] for u, s in train_part.items()}
    if previous is not None:                      # the previous model's architecture, its history length too
        cfg = dataclasses.replace(cfg, max_len=getattr(previous.config, "max_len", 0)
                                  or previous.config.max_position_embeddings)
    cfg = cfg.derive([len(s) for s in train_part.values()])
    windows = training_windows([vocab.encode(s) for s in train_part.values()], cfg.max_len)
    valid = leave_one_out(seqs, vocab, "valid")
    if cold:                                       # validation targets the model has never heard of: not evaluable
        valid = valid.subset([i for i, t in enumerate(valid.targets) if t > 0])
    valid_sample = valid.sample(cfg.valid_users, cfg.seed)
    n_positions = sum(len(w) - 1 for w in windows)
    data_info = {"dataset": dataset_name, "users": len(seqs), "items": len(vocab), "cold_items": len(cold),
                 "interactions": sum(map(len, seqs.values())), "train_windows": len(windows),
                 "train_positions": n_positions, "valid_users": len(valid), "valid_sample": len(valid_sample),
                 "fingerprint": fingerprint}
    log.info("data: %s", data_info)

    text_dim = 0
    text_tokens: list[int] = []
    text_emb = None
    if cfg.use_text:
        from streamrec.model.text import DIM, item_text_matrix
        if not titles:
            raise ValueError("use_text needs item titles (--titles)")
        text_tokens, text_emb = item_text_matrix(vocab, dict(titles), model=cfg.text_model or None,
                                                 progress=progress)
        text_dim = DIM
        data_info["items_with_text"] = len(text_tokens)

    if previous is not None:
        model = previous
        if text_dim != model.config.text_dim:
            raise ValueError(f"--init-from model has text_dim {model.config.text_dim}; this run {text_dim} "
                             "(use --use-text exactly when the previous model did)")
        if len(vocab) > model.config.n_items:
            model.add_items(len(vocab) - model.config.n_items)
        data_info["init_from"] = str(init_from)
    else:
        model = ItemLM(cfg.model_config(len(vocab), text_dim))
    if text_dim and text_tokens:
        model.set_item_text(text_tokens, text_emb)
    model.to(device)
    add_hidden_dropout(model, cfg.hidden_dropout)
    opt = _optimizer(model, cfg)

    history: list[dict] = []
    start_epoch, best, best_epoch, bad, elapsed = 1, -1.0, 0, 0, 0.0
    version = make_version(cfg, fingerprint)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        history, best, best_epoch, bad = ckpt["history"], ckpt["best"], ckpt["best_epoch"], ckpt["bad"]
        start_epoch, elapsed, version = ckpt["epoch"] + 1, ckpt["elapsed"], ckpt["version"]
        log.info("resumed %s at epoch %d (best NDCG@10 %.4f at epoch %d)", version, start_epoch, best, best_epoch)
    model.config.streamrec_version = version
    model.config.max_len = cfg.max_len

    (out / "train_config.json").write_text(json.dumps({**cfg.as_dict(), "version": version, "data": data_info},
                                                      indent=2))
    score = lm_score_fn(model, cfg.max_len, device)
    stop_reason = "epochs"
    t_run = time.time() - elapsed
    for epoch in range(start_epoch, cfg.epochs + 1):
        if bad >= cfg.patience:
            stop_reason = "early-stopping"
            break
        if cfg.max_minutes and (time.time() - t_run) / 60 >= cfg.max_minutes:
            stop_reason = "time-budget"
            break
        model.train()
        rng = random.Random(cfg.seed * 100_003 + epoch)       # per-epoch order: identical after --resume
        batches = length_batches(windows, cfg.batch_size, rng)
        t0 = time.time()
        total, count = 0.0, 0
        bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", disable=not progress, leave=False)
        for b in bar:
            loss, n = next_item_loss(model, [windows[i] for i in b], device, cfg.id_dropout)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total += float(loss.detach()) * n
            count += n
            bar.set_postfix(loss=f"{total / count:.4f}")
        bar.close()
        rec = {"epoch": epoch, "loss": total / max(count, 1), "train_s": round(time.time() - t0, 2)}
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            t1 = time.time()
            m = evaluate(score, valid_sample, (10, 50), cfg.eval_batch_size, progress=progress)
            rec["valid"] = {k: m[k] for k in ("HR@10", "NDCG@10", "HR@50", "NDCG@50", "MRR")}
            rec["eval_s"] = round(time.time() - t1, 2)
            if m["NDCG@10"] > best:
                best, best_epoch, bad = m["NDCG@10"], epoch, 0
                save_model_dir(model, vocab, out / "model")
            else:
                bad += 1
                if cfg.lr_patience and bad % cfg.lr_patience == 0:
                    for group in opt.param_groups:
                        group["lr"] *= cfg.lr_factor
        rec["lr"] = opt.param_groups[0]["lr"]
        history.append(rec)
        log.info("epoch %d loss %.4f valid NDCG@10 %s (best %.4f @ %d) %.1fs", epoch, rec["loss"],
                 f"{rec['valid']['NDCG@10']:.4f}" if "valid" in rec else "-", best, best_epoch,
                 rec["train_s"] + rec.get("eval_s", 0))
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                    "epoch": epoch, "history": history, "best": best, "best_epoch": best_epoch, "bad": bad,
                    "elapsed": time.time() - t_run, "version": version, "config": cfg.as_dict()},
                   ckpt_path.with_suffix(".tmp"))
        ckpt_path.with_suffix(".tmp").replace(ckpt_path)
    else:
        if bad >= cfg.patience:
            stop_reason = "early-stopping"
    train_seconds = time.time() - t_run

    # --- final: the best epoch, validation and test on ALL users ------------------------------------------------------
    if not (out / "model" / "config.json").is_file():      # never validated (epochs < eval_every): keep the last
        save_model_dir(model, vocab, out / "model")
        best_epoch = history[-1]["epoch"] if history else 0
    best_model, vocab = load_model_dir(out / "model", device)
    score = lm_score_fn(best_model, cfg.max_len, device)
    test = leave_one_out(seqs, vocab, "test")
    cold_info = {}
    if cold:
        warm_idx = [i for i, t in enumerate(test.targets) if t > 0]
        cold_info = {"cold_test_cases": len(test) - len(warm_idx)}
        test = test.subset(warm_idx, "test-warm")
    t2 = time.time()
    # the served ranking: LM logits + weighted bonus terms (model/blend.py), weights chosen on validation
    lm = last_batch(score)
    parts = blend_parts(vocab, train_part, best_model.item_text if best_model.config.text_dim else None)
    weights, tried = choose_weights(lm, parts, valid, cfg.eval_batch_size, progress=progress)
    blend = blend_record(weights, tried)
    save_blend(out / "model", blend)
    fns = {"served": blend_score_fn(lm, parts, weights), "lm": lm}
    final_valid = evaluate_many(fns, valid, (10, 20, 50), cfg.eval_batch_size, progress=progress)
    final_test = evaluate_many(fns, test, (10, 20, 50), cfg.eval_batch_size, progress=progress)
    eval_seconds = time.time() - t2

    if cold:
        _add_cold_items(out, cfg, vocab, cold, titles, progress)
    write_warm_start(out, seqs)

    metrics = {"version": version, "dataset": dataset_name, "stop_reason": stop_reason, "best_epoch": best_epoch,
               "best_valid_NDCG@10_sample": best, "epochs_run": len(history), "train_seconds": round(train_seconds, 1),
               "final_eval_seconds": round(eval_seconds, 1),
               "seconds_per_epoch": round(sum(h["train_s"] for h in history) / max(len(history), 1), 2),
               "device": str(device), "torch_threads": torch.get_num_threads(), "data": data_info,
               "blend": {k: blend[k] for k in ("cooc_weight", "text_weight", "young_below")},
               "valid": final_valid["served"], "test": final_test["served"],
               "valid_lm_only": final_valid["lm"], "test_lm_only": final_test["lm"], **cold_info, "history": history}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    final_test = final_test["served"]
    plot_history(history, out / "valid_ndcg.png",
                 f"{dataset_name or 'data'} {version}: test NDCG@10 {final_test['NDCG@10']:.4f}")
    log.info("test (all %d users): %s", final_test["users"],
             {k: round(final_test[k], 4) for k in ("HR@10", "NDCG@10", "HR@20", "NDCG@20", "MRR")})
    return metrics


def write_warm_start(out: Path, sequences: Mapping[str, Sequence[str]]) -> None:
    """``cooc.json`` and ``popularity.json`` for serving: what the worker's online counts start from."""
    CooccurrenceScorer().fit(sequences.values()).save(out / "cooc.json")
    counts: dict[str, int] = {}
    for seq in sequences.values():
        for item in seq:
            counts[item] = counts.get(item, 0) + 1
    (out / "popularity.json").write_text(json.dumps(counts))


def _add_cold_items(out: Path, cfg: TrainConfig, vocab: ItemVocab, cold: set[str],
                    titles: Mapping[str, str] | None, progress: bool) -> None:
    """Cold-start experiment: grow the saved best model by the held-out items (text only, no id embedding).

    Writes ``model_cold/`` (the model that knows the cold items by their titles, as ``ItemLM.add_items`` +
    ``set_item_text`` would at serving time) and ``cold_items.json``.
    """
    model, vocab = load_model_dir(out / "model")
    ordered = sorted(cold, key=lambda x: (len(x), x))
    tokens = list(model.add_items(len(ordered)))
    for item in ordered:
        vocab.add(item)
    if model.config.text_dim and titles:
        from streamrec.model.text import item_text_matrix
        sub = ItemVocab()
        sub.items = [""] + ordered
        toks, emb = item_text_matrix(sub, dict(titles), model=cfg.text_model or None, progress=progress)
        model.set_item_text([tokens[t - 1] for t in toks], emb)
    save_model_dir(model, vocab, out / "model_cold")
    (out / "cold_items.json").write_text(json.dumps(ordered))
