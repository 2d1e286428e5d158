"""LLMReranker with a tiny random Llama and a word-level tokenizer built here (no downloads)."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from streamrec.serve import rerank
from streamrec.model.datasets import synthetic_titles
from streamrec.serve.rerank import LETTERS, LLMReranker
from streamrec.scoring import ScoreRequest, Scored

TITLES = synthetic_titles(40, 4)          # "hiking boots trail outdoor model 3", ...
ITEMS = sorted(TITLES, key=int)


pytestmark = pytest.mark.usefixtures("one_thread")


def build_checkpoint(directory, letters: str = LETTERS[:20]):
    text = " ".join([rerank.HEADER, rerank.CANDIDATES, rerank.QUESTION, rerank.ANSWER, "item - . :", *letters,
                     *TITLES.values()])
    words = sorted({w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[BOS]"] + [w for w in words if w not in ("[PAD]",)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                            bos_token="[BOS]").save_pretrained(directory)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
                      bos_token_id=2, eos_token_id=None, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("tiny-llm"))


class FirstStage:
    """Proposes ITEMS in a fixed order; ``leak`` is returned even when excluded (a buggy first stage)."""

    name, version = "stub", "stub-1"

    def __init__(self, leak: str | None = None):
        self.leak, self.calls, self.observed, self.items = leak, [], [], []

    def score(self, requests):
        self.calls.append(list(requests))
        return [Scored([(i, -float(n)) for n, i in enumerate(
            x for x in ITEMS if x not in r.exclude or x == self.leak)][: r.k], self.name, self.version)
            for r in requests]

    def observe(self, history, item_id):
        self.observed.append(item_id)

    def on_item(self, item_id, record):
        self.items.append(item_id)


def count_forwards(reranker, monkeypatch):
    calls = []
    original = reranker.model.forward
    monkeypatch.setattr(reranker.model, "forward", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    return calls


def test_reranks_only_first_stage_candidates_in_one_forward(checkpoint, monkeypatch):
    first = FirstStage(leak="3")
    rr = LLMReranker(checkpoint, TITLES, first, n_candidates=8, device="cpu")
    forwards = count_forwards(rr, monkeypatch)
    reqs = [ScoreRequest("a", ("1", "2"), 5, frozenset({"1", "2", "3"})),
            ScoreRequest("b", tuple(ITEMS[10:30]), 3, frozenset(ITEMS[:4])),
            ScoreRequest("c", (), 8)]
    answers = rr.score(reqs)
    assert len(forwards) == 1, "one forward pass per batch"
    assert len(first.calls) == 1 and [r.k for r in first.calls[0]] == [8, 8, 8]
    for r, a in zip(reqs, answers):
        cands = [x for x in ITEMS if x not in r.exclude][:8]
        ids = [i for i, _ in a.items]
        assert len(ids) == r.k and set(ids) <= set(cands)
        assert not set(ids) & r.exclude           # the leaked excluded item never comes out
        scores = [s for _, s in a.items]
        assert scores == sorted(scores, reverse=True)
        assert a.scorer == "llm-rerank" and a.version.startswith("stub-1+")


def test_score_is_the_letter_logit_at_the_answer_position(checkpoint):
    rr = LLMReranker(checkpoint, TITLES, FirstStage(), n_candidates=6, device="cpu")
    short = ScoreRequest("a", ("7",), 6)
    long = ScoreRequest("b", tuple(ITEMS[:10]), 6)           # a longer prompt: "a" gets left-padded
    batched, _ = rr.score([short, long])
    cands = ITEMS[:6]
    enc = rr.tokenizer(rr.prompt(short.history, cands), return_tensors="pt")
    with torch.no_grad():
        logits = rr.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[0, -1]
    want = {c: float(logits[rr.letter_ids[n]]) for n, c in enumerate(cands)}
    assert [i for i, _ in batched.items] == sorted(cands, key=lambda c: -want[c])
    for i, s in batched.items:
        assert abs(s - want[i]) < 1e-4


def test_letter_logits_drive_the_order(checkpoint):
    rr = LLMReranker(checkpoint, TITLES, FirstStage(), n_candidates=10, device="cpu")
    boost = {rr.letter_ids[7]: 50.0, rr.letter_ids[2]: 40.0, rr.letter_ids[9]: 30.0}   # H, C, J

    def hook(module, inputs, output):
        output = output.clone()
        for token, value in boost.items():
            output[..., token] += value
        return output
    handle = rr.model.lm_head.register_forward_hook(hook)
    try:
        [a] = rr.score([ScoreRequest("u", ("1", "5"), 3)])
    finally:
        handle.remove()
    cands = ITEMS[:10]
    assert [i for i, _ in a.items] == [cands[7], cands[2], cands[9]]


def test_fewer_candidates_than_k_and_none_at_all(checkpoint, monkeypatch):
    rr = LLMReranker(checkpoint, TITLES, FirstStage(), n_candidates=4, device="cpu")
    [a] = rr.score([ScoreRequest("u", ("1",), 10)])
    assert sorted(i for i, _ in a.items) == sorted(ITEMS[:4])
    forwards = count_forwards(rr, monkeypatch)
    [b] = rr.score([ScoreRequest("u", ("1",), 10, frozenset(ITEMS))])
    assert b.items == [] and forwards == []


def test_prompt_lists_history_titles_and_lettered_candidates(checkpoint):
    rr = LLMReranker(checkpoint, TITLES, FirstStage(), n_candidates=3, device="cpu", max_history=2)
    p = rr.prompt(["1", "2", "3"], ["4", "999"])
    lines = p.split("\n")
    assert lines[0] == rerank.HEADER
    assert lines[1:3] == [f"- {TITLES['2']}", f"- {TITLES['3']}"]    # the last max_history items
    assert lines[3:6] == [rerank.CANDIDATES, f"A. {TITLES['4']}", "B. item 999"]
    assert p.endswith(rerank.ANSWER)


def test_observe_and_catalog_updates_reach_the_first_stage(checkpoint):
    first = FirstStage()
    rr = LLMReranker(checkpoint, TITLES, first, n_candidates=3, device="cpu")
    rr.observe(("1",), "2")
    rr.on_item("77", {"title": "lego bricks toy kids model 1"})
    assert first.observed == ["2"] and first.items == ["77"] and rr.title("77") == "lego bricks toy kids model 1"


def test_tokenizer_without_single_token_letters_is_refused(tmp_path):
    build_checkpoint(tmp_path, letters="")     # no letter tokens: they would all be [UNK]
    with pytest.raises(ValueError, match="letter"):
        LLMReranker(tmp_path, TITLES, FirstStage(), n_candidates=5, device="cpu")


def test_only_local_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError):
        LLMReranker(tmp_path / "meta-llama" / "Llama-3-8B", TITLES, FirstStage())
    with pytest.raises(ValueError):
        LLMReranker(tmp_path, TITLES, FirstStage(), n_candidates=27)
