"""The ONNX serving path without torch (the lean `cpu` image): the numpy item table, the ONNX title encoder, and an
LMScorer that scores and cold-starts an item in a process where importing torch fails."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from streamrec.model.artifacts import ENCODER_SUBDIR, onnx_dir
from streamrec.model.export import export
from streamrec.model.itemlm import ItemLM, ItemLMConfig, ItemVocab
from streamrec.model.table import ItemTable
from streamrec.model.text import DIM, clean_title, embed_texts
from streamrec.model.text_onnx import OnnxTextEncoder, has_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

N_ITEMS = 30
TITLE = "Argan oil &amp; shea butter hair mask"


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A tiny text-aware model as `streamrec train` leaves it (train_config.json names the bundled encoder),
    exported: ONNX graphs + the title encoder."""
    d = tmp_path_factory.mktemp("lean")
    torch.manual_seed(0)
    model = ItemLM(ItemLMConfig(n_items=N_ITEMS, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=2, intermediate_size=32, max_position_embeddings=8,
                                text_dim=DIM))
    with torch.no_grad():
        model.item_text.normal_()
        model.item_emb.weight.mul_(20)
    model.save_pretrained(d)
    ItemVocab(f"sku-{i}" for i in range(1, N_ITEMS + 1)).save(d)
    (d / "train_config.json").write_text(json.dumps({"text_model": "", "use_text": True}))
    paths = export(d, threads=1)
    assert paths["text_encoder"] == onnx_dir(d) / ENCODER_SUBDIR
    return d


def test_item_table_equals_the_torch_model_also_after_growing(text_model):
    model = ItemLM.from_pretrained(text_model).eval()
    table = ItemTable.load(text_model)
    with torch.no_grad():
        assert np.allclose(table.item_embeddings(), model.item_embeddings().numpy(), atol=1e-5)
    emb = np.random.default_rng(0).standard_normal((2, DIM)).astype(np.float32)
    assert list(table.add_items(2)) == list(model.add_items(2)) == [N_ITEMS + 1, N_ITEMS + 2]
    table.set_item_text([N_ITEMS + 1, N_ITEMS + 2], emb)
    model.set_item_text([N_ITEMS + 1, N_ITEMS + 2], emb)   # ItemLM takes arrays too
    with torch.no_grad():
        assert np.allclose(table.item_embeddings(), model.item_embeddings().numpy(), atol=1e-5)
        rows = [N_ITEMS + 2, 3]   # only the rows asked for (what cold start appends), in that order
        assert table.item_embeddings(rows).shape == (2, 16)
        assert np.allclose(table.item_embeddings(rows), model.item_embeddings(rows).numpy(), atol=1e-5)
    assert table.config.n_items == model.config.n_items == N_ITEMS + 2


def test_the_onnx_title_encoder_equals_sentence_transformers(text_model):
    directory = onnx_dir(text_model) / ENCODER_SUBDIR
    assert has_encoder(directory)
    titles = [clean_title(TITLE), "Nail file", "a " * 400]   # the last one is cut at max_seq_length, as in ST
    got = OnnxTextEncoder(directory)(titles)
    ref = embed_texts(titles, progress=False, use_cache=False).numpy()
    assert got.shape == (3, DIM) and np.abs(got - ref).max() < 1e-4
    report = json.loads((onnx_dir(text_model) / "export.json").read_text())
    assert report["text_encoder"]["check_max_abs_diff_vs_sentence_transformers"] < 1e-4


def test_export_skips_the_encoder_for_models_not_made_by_train(tmp_path):
    model = ItemLM(ItemLMConfig(n_items=5, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                num_key_value_heads=1, intermediate_size=16, max_position_embeddings=8, text_dim=4))
    model.save_pretrained(tmp_path)
    ItemVocab(f"i{i}" for i in range(5)).save(tmp_path)
    assert "text_encoder" not in export(tmp_path, ("int8",), threads=1)


BLOCKED = """
import json, sys

class NoTorch:   # what the lean image looks like: these packages are not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "sentence_transformers", "onnx", "onnxscript"):
            raise ImportError(f"No module named {name!r} (blocked)")

sys.meta_path.insert(0, NoTorch())
from streamrec.config import Settings
from streamrec.scoring import ScoreRequest
from streamrec.serve.build import build_scorer
from streamrec.serve.lm import LMScorer

settings = Settings.from_env({"STREAMREC_MODEL_DIR": sys.argv[1], "STREAMREC_BACKEND": "auto",
                              "STREAMREC_SCORER_THREADS": "1"})
assert build_scorer(settings).scorer.backend_name == "onnx-int8"   # auto without torch
scorer = LMScorer(sys.argv[1], "onnx", threads=1)
scorer.on_item("new-1", {"title": sys.argv[2]})
[a] = scorer.score([ScoreRequest("u", ("sku-1", "sku-2", "new-1"), 5)])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "sentence_transformers"))
print(json.dumps({"items": a.items, "added": scorer.cold_start_added, "heavy": heavy}))
"""


def test_the_onnx_path_scores_and_cold_starts_without_torch(text_model):
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(BLOCKED), str(text_model), TITLE],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["heavy"] == [] and out["added"] == 1
    # the same answer as the torch model grown with sentence-transformers' embedding of the cleaned title
    model = ItemLM.from_pretrained(text_model).eval()
    new = model.add_items(1)
    model.set_item_text(list(new), embed_texts([clean_title(TITLE)], progress=False, use_cache=False))
    ids = torch.tensor([[1, 2, new[0]]])
    with torch.no_grad():
        ref = model(ids, torch.ones_like(ids))[0].numpy()
    vocab = {f"sku-{i}": i for i in range(1, N_ITEMS + 1)} | {"new-1": new[0]}
    assert len(out["items"]) == 5
    for item, score in out["items"]:
        assert abs(score - ref[vocab[item]]) < 1e-3, (item, score, ref[vocab[item]])
