"""LMScorer: batching (one model call), exclusions, empty histories, cold start, backends and their selection."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from streamrec.serve import coldstart
from streamrec.config import Settings
from streamrec.model.export import export
from streamrec.model.itemlm import ItemLM, ItemLMConfig, ItemVocab
from streamrec.scoring import CooccurrenceScorer, ScoreRequest
from streamrec.serve import torch_backends
from streamrec.serve.backends import OrtBackend
from streamrec.serve.torch_backends import QuantLinear, TorchBackend
from streamrec.serve.lm import LMScorer, build_lm_scorer, length_buckets, resolve_backend

N_ITEMS = 120
TEXT_DIM = 8
MAX_LEN = 20
CPU_BACKENDS = ["torch", "onnx", "onnx-int8"]
# The cuda-* backends' arithmetic (bf16, fp8 via torch._scaled_mm, int8 via torch._int_mm) runs on the CPU too:
ALL_BACKENDS = CPU_BACKENDS + ["cuda-bf16", "cuda-fp8", "cuda-int8"]


pytestmark = pytest.mark.usefixtures("one_thread")


def item(i: int) -> str:
    return f"sku-{i}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("itemlm")
    torch.manual_seed(0)
    model = ItemLM(ItemLMConfig(n_items=N_ITEMS, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=2, intermediate_size=64, max_position_embeddings=MAX_LEN,
                                text_dim=TEXT_DIM))
    with torch.no_grad():
        model.item_text.normal_()
        model.item_emb.weight.mul_(20)   # a random model with a wider logit spread: fewer near-ties in top-10
    model.save_pretrained(d)
    ItemVocab(item(i) for i in range(1, N_ITEMS + 1)).save(d)
    export(d, threads=1)
    return d


def make(model_dir, backend, **kw):
    if backend.startswith("cuda"):
        kw.setdefault("device", "cpu")
    return LMScorer(model_dir, backend, threads=1, **kw)


def fake_embed(texts):
    rng = np.random.default_rng(len(texts))
    return rng.standard_normal((len(texts), TEXT_DIM)).astype(np.float32)


class CallCounter:
    """Counts the real model invocations of a backend (ONNX session runs / torch forward passes)."""

    def __init__(self, monkeypatch, backend):
        self.n = 0
        if isinstance(backend, OrtBackend):
            session = backend.session

            class Proxy:
                def run(proxy, *a, **kw):
                    self.n += 1
                    return session.run(*a, **kw)
            monkeypatch.setattr(backend, "session", Proxy())
        else:
            original = backend.net.backbone.forward   # every torch path runs the Llama backbone once per call

            def counted(*a, **kw):
                self.n += 1
                return original(*a, **kw)
            monkeypatch.setattr(backend.net.backbone, "forward", counted)


def requests_for(n: int, k: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n):
        hist = tuple(item(int(i)) for i in rng.integers(1, N_ITEMS + 1, size=int(rng.integers(1, 30))))
        extra = frozenset(item(int(i)) for i in rng.integers(1, N_ITEMS + 1, size=5))
        out.append(ScoreRequest(f"u{u}", hist, k, frozenset(hist) | extra))
    return out


def reference_logits(model_dir, history_tokens):
    model = ItemLM.from_pretrained(model_dir).eval()
    ids = torch.tensor([history_tokens])
    with torch.no_grad():
        return model(ids, torch.ones_like(ids))[0].numpy()


# --- selection ------------------------------------------------------------------------------------------------

def test_auto_is_cuda_bf16_with_a_gpu_and_onnx_int8_without(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_backend("auto") == "onnx-int8"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_backend("auto") == "cuda-bf16"
    assert resolve_backend("onnx") == "onnx"
    with pytest.raises(ValueError):
        resolve_backend("tpu")


def test_build_lm_scorer_auto_without_cuda_exports_on_first_use(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    d = tmp_path / "model"
    shutil.copytree(model_dir, d, ignore=shutil.ignore_patterns("onnx"))
    scorer = build_lm_scorer(Settings(model_dir=str(d), backend="auto"))
    assert scorer.backend_name == "onnx-int8"
    assert isinstance(scorer.backend, OrtBackend) and scorer.backend.path == d / "onnx" / "model.int8.onnx"
    assert scorer.backend.path.is_file() and (d / "onnx" / "model.onnx").is_file()
    assert isinstance(scorer.fallback, CooccurrenceScorer)
    [answer] = scorer.score([ScoreRequest("u", (item(1), item(2)), 5)])
    assert len(answer.items) == 5 and answer.scorer == "itemlm" and not answer.fallback


def test_cuda_backends_refuse_to_start_without_cuda(model_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA"):
        LMScorer(model_dir, "cuda-bf16")


def test_version_comes_from_metrics_json_else_a_content_hash(model_dir, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    assert make(d, "torch").version.startswith("itemlm-")
    (d / "metrics.json").write_text('{"version": "beauty-2026-11-20", "ndcg@10": 0.05}')
    assert make(d, "torch").version == "beauty-2026-11-20"


# --- scoring --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_k_items_best_first_never_excluded_one_model_call(model_dir, backend, monkeypatch):
    scorer = make(model_dir, backend)
    calls = CallCounter(monkeypatch, scorer.backend)
    reqs = requests_for(12) + [ScoreRequest("short-k", (item(3),), 3, frozenset({item(3)}))]
    answers = scorer.score(reqs)
    assert calls.n == 1, "a batch of requests must be one model call"
    assert len(answers) == len(reqs)
    for r, a in zip(reqs, answers):
        ids = [i for i, _ in a.items]
        scores = [s for _, s in a.items]
        assert len(ids) == r.k and len(set(ids)) == r.k
        assert not set(ids) & r.exclude
        assert scores == sorted(scores, reverse=True) and all(np.isfinite(scores))
        assert a.scorer == "itemlm" and a.version == scorer.version and not a.fallback


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_scores_equal_the_model_on_the_unpadded_history(model_dir, backend):
    scorer = make(model_dir, backend)
    hist = [7, 3, 99, 42, 5]
    ref = reference_logits(model_dir, hist)
    # batched with a longer history, so this one is left-padded to a wider bucket
    long = tuple(item(i) for i in range(1, 18))
    a, _ = scorer.score([ScoreRequest("u", tuple(item(i) for i in hist), 10), ScoreRequest("v", long, 10)])
    want = np.argsort(-ref[1:], kind="stable")[:10] + 1
    tol = 1e-4 if backend != "onnx-int8" else 0.1
    if backend != "onnx-int8":
        assert [i for i, _ in a.items] == [item(int(t)) for t in want]
    for i, s in a.items:
        assert abs(s - ref[int(i.split("-")[1])]) < tol


@pytest.mark.parametrize("backend", ["cuda-bf16", "cuda-fp8", "cuda-int8", "onnx-int8"])
def test_low_precision_backends_agree_with_fp32(model_dir, backend):
    reqs = requests_for(40, seed=3)
    ref = make(model_dir, "torch").score(reqs)
    got = make(model_dir, backend).score(reqs)
    overlap = np.mean([len({i for i, _ in a.items} & {i for i, _ in b.items}) / 10 for a, b in zip(ref, got)])
    assert overlap >= 0.85, overlap


def test_histories_are_bucketed_and_cut_to_max_len(model_dir, monkeypatch):
    scorer = make(model_dir, "torch")
    assert scorer.buckets == length_buckets(MAX_LEN) == [8, 16, 20]
    widths = []
    original = scorer.backend.topk
    monkeypatch.setattr(scorer.backend, "topk", lambda ids, *a: widths.append(ids.shape[1]) or original(ids, *a))
    for n in (1, 8, 9, 17, 50):
        scorer.score([ScoreRequest("u", tuple(item(1 + i % N_ITEMS) for i in range(n)), 5)])
    assert widths == [8, 8, 16, 20, 20]
    # a history longer than max_len is scored on its last max_len items
    long = tuple(item(1 + i % N_ITEMS) for i in range(50))
    a, b = scorer.score([ScoreRequest("u", long, 10), ScoreRequest("v", long[-MAX_LEN:], 10)])
    assert a.items == b.items


def test_unknown_items_are_skipped_and_empty_histories_use_a_prior(model_dir, monkeypatch):
    scorer = make(model_dir, "onnx-int8")
    calls = CallCounter(monkeypatch, scorer.backend)
    known = (item(4), item(9))
    a, b = scorer.score([ScoreRequest("u", ("nope", item(4), "gone", item(9)), 10),
                         ScoreRequest("v", known, 10)])
    assert a.items == b.items and calls.n == 1
    # before anything was observed: the model's own prior, flagged as a fallback answer
    empty = ScoreRequest("w", ("nope",), 10, frozenset({item(1), item(2)}))
    [e] = scorer.score([empty])
    assert e.fallback and "model prior" in e.fallback_reason
    assert len(e.items) == 10 and not {i for i, _ in e.items} & empty.exclude
    # once items are observed: their popularity; mixed batch = one model call for the non-empty rows
    for i, n in ((item(5), 3), (item(6), 1), (item(2), 9), (item(7), 2)):
        for _ in range(n):
            scorer.observe((), i)
    calls.n = 0
    e, full = scorer.score([ScoreRequest("w", (), 3, frozenset({item(2)})), ScoreRequest("v", known, 10)])
    assert [i for i, _ in e.items] == [item(5), item(7), item(6)] and "popularity" in e.fallback_reason
    assert calls.n == 1 and not full.fallback and len(full.items) == 10


def test_k_larger_than_the_catalog_returns_what_is_left(model_dir):
    scorer = make(model_dir, "torch")
    exclude = frozenset(item(i) for i in range(1, N_ITEMS - 2))   # 3 items left
    [a] = scorer.score([ScoreRequest("u", (item(1),), 50, exclude)])
    assert sorted(i for i, _ in a.items) == sorted(item(i) for i in range(N_ITEMS - 2, N_ITEMS + 1))


# --- cold start -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["torch", "onnx", "onnx-int8", "cuda-int8"])
def test_cold_start_item_is_scorable_at_once(model_dir, backend):
    scorer = make(model_dir, backend, embed_fn=fake_embed)
    everything_known = frozenset(item(i) for i in range(1, N_ITEMS + 1))
    scorer.on_item("new-1", {"schema_version": 1, "item_id": "new-1", "title": "Rose lip balm",
                             "categories": ["Beauty"]})
    scorer.on_item(item(3), {"schema_version": 1, "item_id": item(3), "title": "already known"})
    scorer.on_item("gone", None)
    [a] = scorer.score([ScoreRequest("u", (item(1), item(2)), 5, everything_known)])
    assert [i for i, _ in a.items] == ["new-1"] and np.isfinite(a.items[0][1])
    assert len(scorer.vocab) == N_ITEMS + 1 and scorer.cold_start_added == 1
    # the model reads it in histories too, and scores it like the grown torch model does
    model = ItemLM.from_pretrained(model_dir).eval()
    new = model.add_items(1)
    model.set_item_text(list(new), torch.as_tensor(fake_embed(["x"])))
    ids = torch.tensor([[1, 2, new[0]]])
    with torch.no_grad():
        ref = model(ids, torch.ones_like(ids))[0].numpy()
    [b] = scorer.score([ScoreRequest("u", (item(1), item(2), "new-1"), 5)])
    tol = 1e-4 if backend in ("torch", "onnx") else 0.15
    for i, s in b.items:
        token = scorer.vocab.id_to_token[i]
        assert abs(s - ref[token]) < tol, (i, s, ref[token])


def test_cold_start_needs_text_and_survives_embedding_errors(model_dir, tmp_path):
    def broken(texts):
        raise OSError("encoder unavailable")
    scorer = make(model_dir, "torch", embed_fn=broken)
    scorer.on_item("new-2", {"title": "Something"})
    [a] = scorer.score([ScoreRequest("u", (item(1),), 5)])
    assert len(a.items) == 5 and "new-2" not in scorer.vocab
    # a model trained without text cannot place unknown items: they are ignored
    torch.manual_seed(0)
    plain = ItemLM(ItemLMConfig(n_items=20, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=2, intermediate_size=64, max_position_embeddings=8))
    plain.save_pretrained(tmp_path)
    ItemVocab(item(i) for i in range(1, 21)).save(tmp_path)
    s2 = LMScorer(tmp_path, "torch", embed_fn=fake_embed)
    s2.on_item("new-3", {"title": "Something"})
    assert s2.flush_items() == 0 and "new-3" not in s2.vocab


def test_cold_start_embeds_clean_titles_with_the_trainers_encoder(model_dir, tmp_path, monkeypatch):
    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    (d / "train_config.json").write_text('{"text_model": "/models/my-encoder", "version": "v7"}')
    seen = []
    monkeypatch.setattr(coldstart, "_embed_texts", lambda texts, model=None: seen.append((list(texts), model))
                        or fake_embed(texts))
    monkeypatch.setattr(coldstart, "FLUSH_LIMIT", 2)
    scorer = make(d, "torch")
    assert scorer.version == "v7"
    scorer.on_item("new-4", {"title": "Argan oil &amp; shea  butter", "categories": ["Hair"]})
    scorer.on_item("new-5", {"title": "Nail file"})
    scorer.on_item("new-6", {"title": "Hair clip"})
    scorer.on_item("no-title", {"description": "no title, nothing to embed"})
    assert scorer.flush_items() == 2 and scorer.flush_items() == 1 and scorer.flush_items() == 0
    assert seen == [(["Argan oil & shea butter", "Nail file"], "/models/my-encoder"), (["Hair clip"],
                                                                                       "/models/my-encoder")]
    assert scorer.vocab.encode(["new-4", "new-5", "new-6"]) == [N_ITEMS + 1, N_ITEMS + 2, N_ITEMS + 3]


def test_a_training_artefact_directory_is_accepted(model_dir, tmp_path):
    # streamrec train --out DIR: DIR/model holds the weights, DIR/metrics.json the version; max_len in the config
    out = tmp_path / "run"
    model = ItemLM.from_pretrained(model_dir)
    model.config.max_len = 12
    model.save_pretrained(out / "model")
    ItemVocab.load(model_dir).save(out / "model")
    (out / "metrics.json").write_text('{"version": "itemlm-abc-20261122", "test": {}}')
    for path in (out, out / "model"):
        scorer = make(path, "torch")
        assert scorer.model_dir == out / "model" and scorer.version == "itemlm-abc-20261122"
        assert scorer.max_len == 12 and scorer.buckets == [8, 12]
        [a] = scorer.score([ScoreRequest("u", tuple(item(i) for i in range(1, 30)), 4)])
        assert len(a.items) == 4


# --- fp8 / int8 building blocks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,tol", [("fp8", 0.08), ("int8", 0.02)])
@pytest.mark.parametrize("rows", [1, 40])
@pytest.mark.parametrize("rowwise", [True, False])
def test_quant_linear_is_close_to_linear(mode, tol, rows, rowwise, monkeypatch):
    monkeypatch.setitem(torch_backends._PROBED, ("cpu", "fp8_rowwise"), rowwise)   # False: tensor-wise + fp32 rescale
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=True)
    x = torch.randn(rows, 64)
    want = lin(x).detach()
    for fp32_out in (False, True):
        layer = QuantLinear(lin.weight, lin.bias, mode, torch.bfloat16, fp32_out=fp32_out)
        assert layer.rowwise == (mode == "fp8" and rowwise and not fp32_out)
        got = layer(x)
        assert got.dtype == (torch.float32 if fp32_out else torch.bfloat16) and got.shape == want.shape
        assert (got.float() - want).norm() / want.norm() < tol


@pytest.mark.parametrize("rowwise", [True, False])
def test_fp8_layout_passes_the_cuda_checks(rowwise, monkeypatch):
    # On the meta device torch applies _scaled_mm's CUDA rules (row-major A, column-major B, K and N % 16). The
    # probe answers False there without probing, so each path is forced in turn.
    monkeypatch.setitem(torch_backends._PROBED, ("meta", "fp8_rowwise"), rowwise)
    w = torch.empty(48, 64, device="meta")
    x = torch.empty(5, 7, 64, device="meta", dtype=torch.bfloat16)
    for fp32_out in (False, True):
        layer = QuantLinear(w, None, "fp8", torch.bfloat16, fp32_out=fp32_out)
        assert layer.rowwise == (rowwise and not fp32_out)
        assert layer(x).shape == (5, 7, 48)
    a = torch.empty(5, 64, device="meta", dtype=torch.float8_e4m3fn)
    b_row_major = torch.empty(64, 48, device="meta", dtype=torch.float8_e4m3fn)
    with pytest.raises(RuntimeError, match="col_major"):   # the check is live: a row-major B is refused
        torch._scaled_mm(a, b_row_major, scale_a=torch.ones(5, 1, device="meta"),
                         scale_b=torch.ones(1, 48, device="meta"), out_dtype=torch.bfloat16)
    with pytest.raises(ValueError):
        QuantLinear(torch.empty(40, 60), None, "fp8", torch.bfloat16)


def test_the_capability_probe_answers_false_off_cuda_without_probing(monkeypatch):
    def no_gemm(*a, **kw):
        raise AssertionError("probed a device that cannot answer")
    monkeypatch.setattr(torch, "_scaled_mm", no_gemm)
    monkeypatch.setattr(torch, "_int_mm", no_gemm)
    for device in ("meta", "cpu"):
        for kernel in ("fp8_rowwise", "fp8_tensorwise", "int8"):
            assert torch_backends.kernel_supported(torch.device(device), kernel) is False
        assert torch_backends.fp8_rowwise_supported(torch.device(device)) is False
        torch_backends.require_kernels(torch.device(device), "fp8")   # the CPU path of cuda-* needs no probe


@pytest.mark.parametrize("kernel", ["fp8_rowwise", "fp8_tensorwise", "int8"])
def test_the_probe_makes_calls_cuda_accepts(kernel):
    # The meta device checks the CUDA layout and dtype rules of the probe's own calls: a probe that failed on its
    # own arguments would switch a capable GPU to the slow path (or refuse the mode).
    torch_backends._kernel_call(kernel, torch.device("meta"))


def test_a_gpu_whose_kernels_fail_refuses_the_mode(monkeypatch):
    monkeypatch.setitem(torch_backends._PROBED, ("cuda", "fp8_tensorwise"), False)
    monkeypatch.setitem(torch_backends._PROBED, ("cuda", "int8"), True)
    with pytest.raises(RuntimeError, match="_scaled_mm"):
        torch_backends.require_kernels(torch.device("cuda"), "fp8")
    torch_backends.require_kernels(torch.device("cuda"), "int8")


def test_partial_quantisation_is_logged_with_the_layers_kept_in_bf16(tmp_path, caplog):
    torch.manual_seed(0)
    odd = ItemLM(ItemLMConfig(n_items=20, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              num_key_value_heads=2, intermediate_size=40, max_position_embeddings=8))
    odd.save_pretrained(tmp_path)
    ItemVocab(item(i) for i in range(1, 21)).save(tmp_path)
    with caplog.at_level("INFO", logger="streamrec.serve.torch_backends"):
        scorer = make(tmp_path, "cuda-fp8")
    b = scorer.backend
    assert sorted(b.quantized) == ["layers.0.self_attn." + p for p in ("k_proj", "o_proj", "q_proj", "v_proj")]
    assert sorted(n.split()[0] for n in b.kept_bf16) == ["layers.0.mlp." + p for p in ("down_proj", "gate_proj",
                                                                                       "up_proj")]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("kept in bf16" in m and "layers.0.mlp.gate_proj (32x40)" in m for m in warned), warned
    assert any("4 Linear layers quantised" in r.getMessage() for r in caplog.records)


def test_quantized_backend_replaces_every_backbone_linear(model_dir):
    scorer = make(model_dir, "cuda-fp8")
    assert isinstance(scorer.backend, TorchBackend)
    assert len(scorer.backend.quantized) == 2 * 7
    assert scorer.backend.net.backbone.layers[0].mlp.up_proj.wq_t.dtype == torch.float8_e4m3fn
    rope = scorer.backend.net.backbone.rotary_emb
    assert rope.inv_freq.dtype == torch.float32 and scorer.backend.table.dtype == torch.bfloat16
    assert scorer.backend.scoring.wq_t.shape[1] % 16 == 0 and scorer.backend.scoring.wq_t.shape[1] >= N_ITEMS + 1


def test_group_lengths_makes_one_call_per_padded_width_with_the_same_answers(model_dir, monkeypatch):
    single = make(model_dir, "torch")
    grouped = make(model_dir, "torch", group_lengths=4)
    calls = CallCounter(monkeypatch, grouped.backend)
    reqs = [ScoreRequest(f"u{n}", tuple(item(1 + (n * 7 + i) % N_ITEMS) for i in range(n)), 10) for n in
            (1, 3, 8, 2, 12, 16, 19, 40)]   # widths 8, 8, 8, 8, 16, 16, 20, 20
    a = single.score(reqs)
    b = grouped.score(reqs)
    assert calls.n == 3
    for x, y in zip(a, b):
        assert [i for i, _ in x.items] == [i for i, _ in y.items]
        np.testing.assert_allclose([s for _, s in x.items], [s for _, s in y.items], atol=1e-4)
    calls.n = 0
    grouped.score(reqs[:3] + reqs[-1:])   # 4 requests = group_lengths: split by width (8 and 20)
    assert calls.n == 2
    calls.n = 0
    grouped.score(reqs[:2] + reqs[-1:])   # 3 < group_lengths: one call
    assert calls.n == 1


def test_the_default_encoder_is_called_quietly_uncached_and_its_embedding_is_used(model_dir, tmp_path, monkeypatch):
    import streamrec.model.text
    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    (d / "train_config.json").write_text('{"text_model": "/models/enc"}')
    calls = []
    want = np.arange(TEXT_DIM, dtype=np.float32)[None] / 10

    def encoder(texts, **kw):
        calls.append((list(texts), kw))
        return want
    monkeypatch.setattr(streamrec.model.text, "embed_texts", encoder)
    scorer = make(d, "torch")                 # no embed_fn: the trainer's encoder through _embed_texts
    scorer.on_item("new-9", {"title": "Lip balm"})
    assert scorer.flush_items() == 1
    assert calls == [(["Lip balm"], {"model": "/models/enc", "progress": False, "use_cache": False})]
    token = scorer.vocab.id_to_token["new-9"]
    np.testing.assert_array_equal(scorer.model.item_text[token].numpy(), want[0])


# --- cold start: kept until embedded, rows appended ----------------------------------------------------------------

def test_cold_start_items_stay_queued_through_embedding_failures_and_are_retried_with_backoff(model_dir,
                                                                                             monkeypatch):
    from types import SimpleNamespace

    from streamrec import metrics
    clock = [1000.0]
    monkeypatch.setattr(coldstart, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    calls, failures = [], [2]

    def flaky(texts):
        calls.append(list(texts))
        if failures[0]:
            failures[0] -= 1
            raise OSError("encoder unavailable")
        return fake_embed(texts)

    def backlog():
        return metrics.COLD_START_BACKLOG._value.get()

    scorer = make(model_dir, "torch", embed_fn=flaky)
    scorer.on_item("new-a", {"title": "A"})
    scorer.on_item("new-b", {"title": "B"})
    assert backlog() == 2
    assert scorer.flush_items() == 0 and len(calls) == 1 and backlog() == 2   # failed: both still queued
    assert scorer.flush_items() == 0 and len(calls) == 1                      # backoff: not retried at once
    clock[0] += 1.0
    assert scorer.flush_items() == 0 and len(calls) == 2                      # failed again: backoff doubles
    clock[0] += 1.0
    assert scorer.flush_items() == 0 and len(calls) == 2
    clock[0] += 1.0
    assert scorer.flush_items() == 2 and calls[-1] == ["A", "B"]
    assert "new-a" in scorer.vocab and "new-b" in scorer.vocab and backlog() == 0
    assert scorer.flush_items() == 0 and len(calls) == 3


def _table_state(b) -> dict[str, tuple[np.ndarray, int]]:
    """Copies of a backend's item-table buffers, each with the axis its items run along."""
    if isinstance(b, OrtBackend):
        return {"table": (b.table.copy(), 0)}
    out = {"table": (b.table.float().numpy().copy(), 0)}
    if b.scoring is not None:   # the quantized item-scoring layer: items are its output channels (columns of wq_t)
        out["wq_t"] = (b.scoring.wq_t.float().numpy().copy(), 1)
        out["w_scale"] = (b.scoring.w_scale.numpy().copy(), 1)
    else:
        out["table_f32"] = (b.table_f32.numpy().copy(), 0)
    return out


@pytest.mark.parametrize("backend", ["torch", "onnx-int8", "cuda-bf16", "cuda-fp8", "cuda-int8"])
def test_cold_start_appends_rows_and_leaves_the_existing_table_alone(model_dir, backend, monkeypatch):
    scorer = make(model_dir, backend, embed_fn=fake_embed)
    b = scorer.backend
    n = N_ITEMS + 1
    before = _table_state(b)
    monkeypatch.setattr(b, "set_table", lambda t: pytest.fail("the whole item table was uploaded again"))
    full = scorer.model.item_embeddings

    def rows_only(tokens=None):
        assert tokens is not None, "the whole item table was recomputed"
        return full(tokens)
    monkeypatch.setattr(scorer.model, "item_embeddings", rows_only)
    for i in range(3):
        scorer.on_item(f"new-{i}", {"title": f"item {i}"})
    assert scorer.flush_items() == 3
    after = _table_state(b)
    for name, (x, axis) in before.items():   # existing items' rows, quantized copies and scales: unchanged
        y = after[name][0]
        np.testing.assert_array_equal(np.take(y, range(n), axis), np.take(x, range(n), axis), err_msg=name)
    assert after["table"][0].shape[0] == n + 3
    monkeypatch.undo()
    want = scorer.model.item_embeddings()[n:]   # the grown model's own rows (ItemLM, or ItemTable on ONNX)
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else want
    np.testing.assert_allclose(after["table"][0][n:], want, atol=0.05 if backend.startswith("cuda") else 1e-6,
                               rtol=0.02)
    # and they score: with every trained item excluded, the new ones are what is left
    everything_known = frozenset(item(i) for i in range(1, N_ITEMS + 1))
    [a] = scorer.score([ScoreRequest("u", (item(1), "new-0"), 5, everything_known)])
    assert {i for i, _ in a.items} == {"new-0", "new-1", "new-2"} and all(np.isfinite(s) for _, s in a.items)


def test_a_table_past_its_spare_capacity_is_uploaded_once_in_full(model_dir, monkeypatch):
    monkeypatch.setattr(torch_backends, "spare_capacity", lambda n: n + 1)
    scorer = make(model_dir, "torch", embed_fn=fake_embed)
    for i in range(3):
        scorer.on_item(f"new-{i}", {"title": f"item {i}"})
    assert scorer.flush_items() == 3
    assert scorer.backend.n_table == N_ITEMS + 4
    torch.testing.assert_close(scorer.backend.table, scorer.model.item_embeddings().detach())


# --- warm-up -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS + ["cuda-int8"])
def test_warm_up_runs_every_padded_width_through_the_scoring_path(model_dir, backend, monkeypatch):
    scorer = make(model_dir, backend)
    shapes = []
    original = scorer.backend.topk
    monkeypatch.setattr(scorer.backend, "topk", lambda ids, *a: shapes.append(ids.shape) or original(ids, *a))
    assert scorer.warm_up((1, 4)) == 6
    assert shapes == [(1, 8), (4, 8), (1, 16), (4, 16), (1, 20), (4, 20)]


def test_build_lm_scorer_warms_up_before_returning(model_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    scorer = build_lm_scorer(Settings(model_dir=str(model_dir), backend="onnx", max_batch_size=16))
    assert scorer.backend.calls == 2 * len(scorer.buckets)   # batch sizes 1 and max_batch_size, every width


# --- empty-history popularity --------------------------------------------------------------------------------------

def test_empty_history_answers_do_not_scan_every_count(model_dir, monkeypatch):
    scorer = make(model_dir, "torch")
    for n in range(5000):
        scorer.observe((), f"tail-{n}")
    for _ in range(3):
        scorer.observe((), item(7))
    for _ in range(2):
        scorer.observe((), item(8))
    counted = scorer.popularity.counts

    class NoScan(dict):
        def values(self):
            raise AssertionError("summed every count")

        def items(self):
            raise AssertionError("sorted every count")
    scorer.popularity.counts = NoScan(counted)
    [e] = scorer.score([ScoreRequest("w", (), 2)])
    assert [i for i, _ in e.items] == [item(7), item(8)]
    assert e.items[0][1] == pytest.approx(3 / 5005)
