"""ONNX export of the item LM: fp32 equals torch, int8 keeps the ranking, the item table is a (cold-start) input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from streamrec.model.datasets import synthetic
from streamrec.model.export import FILES, export, is_current, model_fingerprint, scoring_matmul, top_k_overlap
from streamrec.model.itemlm import ItemLM, ItemLMConfig, ItemVocab, left_pad
from streamrec.model.train import next_item_loss

MAX_LEN = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def train_tiny(directory, *, text_dim: int = 8, steps: int = 150, seed: int = 0):
    """A small ItemLM fitted for a few seconds on the synthetic data set (next-item cross-entropy).

    Returns the held-out evaluation: (token histories without their last item, the last item's token).
    """
    seqs = synthetic(n_users=300, n_items=60, length=16, n_clusters=4, seed=seed)
    vocab = ItemVocab(sorted({i for s in seqs.values() for i in s}, key=int))
    torch.manual_seed(seed)
    model = ItemLM(ItemLMConfig(n_items=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=2, intermediate_size=64, max_position_embeddings=MAX_LEN,
                                text_dim=text_dim))
    if text_dim:
        with torch.no_grad():
            model.item_text.normal_()
    train = [vocab.encode(s[:-1]) for s in seqs.values()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss, _ = next_item_loss(model, [train[i][-MAX_LEN:] for i in torch.randint(0, len(train), (64,))], "cpu")
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(directory)
    vocab.save(directory)
    return train, [vocab.id_to_token[s[-1]] for s in seqs.values()]


def ndcg_at_10(logits: np.ndarray, targets) -> float:
    top = np.argsort(-logits, axis=1, kind="stable")[:, :10]
    return float(np.mean([1 / np.log2(list(r).index(t) + 2) if t in r else 0.0 for r, t in zip(top, targets)]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("itemlm")
    histories, targets = train_tiny(d)
    paths = export(d, threads=1)
    return d, paths, histories, targets


def run(path, ids, mask, table=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    if table is not None:
        feed["item_table"] = table.numpy()
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def random_histories(n_items, count, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, MAX_LEN + 1, (count,), generator=g)
    return [torch.randint(1, n_items + 1, (int(n),), generator=g).tolist() for n in lengths]


def test_fp32_onnx_equals_torch_on_varied_lengths(trained):
    d, paths, _, _ = trained
    model = ItemLM.from_pretrained(d).eval()
    table = model.item_embeddings().detach()
    for batch, seed in ((1, 0), (3, 1), (17, 2), (64, 3)):
        ids, mask = left_pad(random_histories(model.config.n_items, batch, seed), MAX_LEN)
        with torch.no_grad():
            ref = model(ids, mask).numpy()
        for got in (run(paths["fp32"], ids, mask), run(paths["fp32"], ids, mask, table)):   # baked / fed table
            assert got.shape == (batch, model.config.n_items + 1)
            assert np.all(np.isneginf(got[:, 0]))
            np.testing.assert_allclose(got[:, 1:], ref[:, 1:], atol=1e-4, rtol=0)
    # dynamic batch and sequence axes, the table input optional (an initializer with the same name)
    g = onnx.load(str(paths["fp32"])).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in g.input}
    assert isinstance(dims["input_ids"][0], str) and isinstance(dims["input_ids"][1], str)
    assert dims["attention_mask"] == dims["input_ids"]
    assert "item_table" in {i.name for i in g.initializer}


def test_export_report_records_the_checks(trained):
    d, paths, _, _ = trained
    report = json.loads(paths["report"].read_text())
    assert report["fingerprint"] == model_fingerprint(d)
    assert report["exporter"] in ("dynamo", "torchscript")
    assert report["checks"]["fp32_max_abs_diff_vs_torch"] < 1e-4
    # the checks the export ran on its own histories: fp32 ranks as torch does, int8 keeps most of the top 10
    assert report["checks"]["fp32_top10_overlap_vs_torch"] >= 0.99
    assert report["checks"]["int8_top10_overlap_vs_fp32"] >= 0.9
    assert is_current(d, paths["report"].parent, ["fp32", "int8"])


def test_int8_keeps_ranking_quality_of_a_trained_model(trained):
    d, paths, histories, targets = trained
    ids, mask = left_pad(histories, MAX_LEN)
    fp32 = run(paths["fp32"], ids, mask)
    int8 = run(paths["int8"], ids, mask)
    assert top_k_overlap(int8, fp32) >= 0.9
    base, quant = ndcg_at_10(fp32, targets), ndcg_at_10(int8, targets)
    assert base > 0.3, "the tiny model did not learn the synthetic transitions"
    assert quant >= 0.98 * base, (base, quant)


def test_int8_graph_quantizes_the_backbone_but_not_the_item_scoring(trained):
    _, paths, _, _ = trained
    report = json.loads(paths["report"].read_text())
    g = onnx.load(str(paths["int8"])).graph
    ops = [n.op_type for n in g.node]
    integer = sum(op in ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat") for op in ops)
    assert integer >= 2 * 7   # q, k, v, o, gate, up, down in each of the 2 layers
    scoring = report["quantization"]["scoring_matmul"]
    assert scoring == scoring_matmul(onnx.load(str(paths["fp32"])))
    node = next(n for n in g.node if n.name == scoring)
    assert node.op_type == "MatMul"


def test_a_grown_item_table_is_scored_without_re_export(trained):
    d, paths, _, _ = trained
    model = ItemLM.from_pretrained(d).eval()
    new = model.add_items(2)
    model.set_item_text(list(new), torch.randn(2, model.config.text_dim))
    table = model.item_embeddings().detach()
    ids, mask = left_pad([[1, 2, new[0]], [new[1]], [5, 6, 7, 8]], MAX_LEN)   # new items in histories too
    with torch.no_grad():
        ref = model(ids, mask).numpy()
    got = run(paths["fp32"], ids, mask, table)
    assert got.shape[1] == model.config.n_items + 1
    np.testing.assert_allclose(got[:, 1:], ref[:, 1:], atol=1e-4, rtol=0)
    q = run(paths["int8"], ids, mask, table)
    assert q.shape == got.shape and np.all(np.isfinite(q[:, new[0]]))


def test_fingerprint_changes_with_the_weights(trained, tmp_path):
    d, _, _, _ = trained
    model = ItemLM.from_pretrained(d)
    with torch.no_grad():
        model.item_emb.weight[1] += 1.0
    model.save_pretrained(tmp_path)
    ItemVocab.load(d).save(tmp_path)
    assert model_fingerprint(tmp_path) != model_fingerprint(d)
    assert not is_current(tmp_path, d / "onnx", ["fp32"])


def test_torchscript_exporter_also_matches(tmp_path):
    torch.manual_seed(1)
    model = ItemLM(ItemLMConfig(n_items=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=2, intermediate_size=64, max_position_embeddings=MAX_LEN))
    model.save_pretrained(tmp_path)
    ItemVocab(str(i) for i in range(50)).save(tmp_path)
    paths = export(tmp_path, ("fp32",), exporter="torchscript", threads=1)
    assert not (tmp_path / "onnx" / FILES["int8"]).exists()
    report = json.loads(paths["report"].read_text())
    assert report["exporter"] == "torchscript" and report["checks"]["fp32_max_abs_diff_vs_torch"] < 1e-4
    ids, mask = left_pad(random_histories(50, 9, 4), MAX_LEN)
    with torch.no_grad():
        ref = model.eval()(ids, mask).numpy()
    np.testing.assert_allclose(run(paths["fp32"], ids, mask)[:, 1:], ref[:, 1:], atol=1e-4, rtol=0)


def test_unknown_quantize_kind_is_rejected(tmp_path):
    with pytest.raises(ValueError):
        export(tmp_path, ("fp16",))
