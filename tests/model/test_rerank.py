"""Cross-encoders (BERT, XLM-R, ModernBERT) against sentence-transformers' CrossEncoder (tests/data/golden/rerank):
pair ids and token types, logits, activated scores and `rank` orders, with every case's pairs packed together."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from model.encoder import Encoder
from model.errors import ConfigError, InputError, ModelError, PairTooLong
from tests.conftest import GOLDEN, load_golden

RERANK = GOLDEN / "rerank"
FOLDERS = ["bert-cross-encoder-tiny", "xlmr-reranker-tiny", "modernbert-reranker-tiny"]
ATOL = 2e-5  # goldens are rounded to 6 decimals


def load(folder, max_length=None) -> Encoder:
    return Encoder.load(str(RERANK / folder), device="cpu", dtype="float32", max_input_tokens=max_length)


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_golden_case(folder):
    golden = load_golden(RERANK / folder)
    encoders = {}
    for case in golden["cases"]:
        max_length = case["crossencoder_args"].get("max_length")
        enc = encoders.get(max_length) or encoders.setdefault(max_length, load(folder, max_length))
        assert enc.info.max_input_tokens == case["max_length"]
        pairs = enc.tokenize_pairs(case["query"], case["documents"], truncate=True)
        for pair, want in zip(pairs, case["pairs"]):
            assert pair.ids == want["input_ids"] and len(pair) == len(want["input_ids"])
            if "token_type_ids" in want:
                assert pair.token_types == want["token_type_ids"]
        logits = enc.score(pairs)
        assert logits.dtype == np.float32 and logits.shape == (len(pairs),)
        np.testing.assert_allclose(logits, [p["logit"] for p in case["pairs"]], atol=ATOL, err_msg=case["name"])
        scores = enc.activate(logits)
        np.testing.assert_allclose(scores, [p["predict_default"] for p in case["pairs"]], atol=ATOL)
        sigmoid = 1 / (1 + np.exp(-logits.astype(np.float64)))
        np.testing.assert_allclose(sigmoid, [p["sigmoid"] for p in case["pairs"]], atol=ATOL)
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        assert order == [r["corpus_id"] for r in case["rank"]], case["name"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_pairs_of_every_case_packed_together(folder):
    """One batch of every untruncated case's pairs (11 to 1,259 tokens) gives each pair's own logit."""
    enc = load(folder)
    pairs, want = [], []
    for case in load_golden(RERANK / folder)["cases"]:
        if "max_length" in case["crossencoder_args"]:
            continue
        pairs += enc.tokenize_pairs(case["query"], case["documents"], truncate=True)
        want += [p["logit"] for p in case["pairs"]]
    assert len({len(p) for p in pairs}) > 10
    np.testing.assert_allclose(enc.score(pairs), want, atol=ATOL)
    assert enc.score([]).shape == (0,) and enc.tokenize_pairs("q", [], truncate=False) == []


def test_kind_activation_and_info():
    bert, xlmr, modern = (load(f) for f in FOLDERS)
    assert {e.info.kind for e in (bert, xlmr, modern)} == {"reranker"}
    assert bert.info.activation == "Identity"  # the folder's metadata (ms-marco-MiniLM returns raw logits)
    assert xlmr.info.activation == modern.info.activation == "Sigmoid"  # no metadata, one label
    assert bert.info.architecture == "BertForSequenceClassification"
    assert xlmr.info.architecture == "XLMRobertaForSequenceClassification"
    assert (modern.info.architecture, modern.info.pooling) == ("ModernBertForSequenceClassification", "mean")
    assert (bert.info.max_input_tokens, xlmr.info.max_input_tokens, modern.info.max_input_tokens) == (512, 512, 8192)


def test_over_the_limit_without_truncation_names_the_document():
    enc = load("xlmr-reranker-tiny")
    case = next(c for c in load_golden(RERANK / "xlmr-reranker-tiny")["cases"] if c["name"] == "overlong_document")
    with pytest.raises(PairTooLong) as err:
        enc.tokenize_pairs(case["query"], case["documents"], truncate=False)
    assert isinstance(err.value, InputError) and err.value.index == 0 and err.value.limit == 512
    assert "document 0" in str(err.value) and "1259 tokens" in str(err.value)
    pairs = enc.tokenize_pairs(case["query"], case["documents"][1:], truncate=False)  # the short one is fine
    assert [len(p) for p in pairs] == [28]


def test_wrong_kind_is_an_error(minilm):
    with pytest.raises(ModelError, match="cannot score pairs"):
        minilm.score([])
    with pytest.raises(ModelError, match="scores pairs"):
        load("bert-cross-encoder-tiny").embed([[101, 102]])


def copy(folder, tmp_path):
    dst = tmp_path / folder
    shutil.copytree(RERANK / folder, dst)
    return dst


def edit_json(path, **changes):
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_activation_rule_order(tmp_path):
    """sentence-transformers' order: config_sentence_transformers.json (with modules.json), then config.json's
    `sentence_transformers.activation_fn`, then the legacy key, then Sigmoid."""
    folder = copy("bert-cross-encoder-tiny", tmp_path)
    st = folder / "config_sentence_transformers.json"
    edit_json(st, activation_fn="torch.nn.modules.activation.Tanh")
    assert load(folder).info.activation == "Tanh"
    (folder / "modules.json").unlink()  # without modules.json that file's activation is not read
    assert load(folder).info.activation == "Identity"
    config = json.loads((folder / "config.json").read_text())
    del config["sentence_transformers"]
    config["sbert_ce_default_activation_function"] = "torch.nn.modules.activation.ReLU"
    (folder / "config.json").write_text(json.dumps(config))
    assert load(folder).info.activation == "ReLU"
    del config["sbert_ce_default_activation_function"]
    (folder / "config.json").write_text(json.dumps(config))
    enc = load(folder)
    assert enc.info.activation == "Sigmoid"
    np.testing.assert_allclose(enc.activate(np.array([0.0, 2.0])), [0.5, 1 / (1 + np.exp(-2.0))], atol=1e-7)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"activation_fn": "my_package.Sharpen"}, "activation_fn='my_package.Sharpen' is not supported"),
        ({"activation_fn": "torch.nn.modules.activation.Softmax"}, "Softmax"),
    ],
)
def test_unsupported_activation_is_a_load_error(tmp_path, change, message):
    folder = copy("bert-cross-encoder-tiny", tmp_path)
    edit_json(folder / "config_sentence_transformers.json", **change)
    with pytest.raises(ConfigError, match=message):
        load(folder)


def test_more_than_one_label_is_a_load_error(tmp_path):
    folder = copy("xlmr-reranker-tiny", tmp_path)
    edit_json(folder / "config.json", id2label={"0": "NEG", "1": "POS"})
    with pytest.raises(ConfigError, match="num_labels=2"):
        load(folder)


def test_a_module_after_a_cross_encoder_is_a_load_error(tmp_path):
    folder = copy("bert-cross-encoder-tiny", tmp_path)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigError, match="sentence_transformers.models.Pooling"):
        load(folder)


def test_left_truncation_cuts_the_starts():
    """TEI's truncation_direction=left: longest-first, each text losing tokens from its start."""
    from tokenizers import Tokenizer

    enc = load("bert-cross-encoder-tiny", 64)
    case = next(c for c in load_golden(RERANK / "bert-cross-encoder-tiny")["cases"] if c["name"] == "long_query")
    pairs = enc.tokenize_pairs(case["query"], case["documents"], truncate=True, truncation_direction="left")
    reference = Tokenizer.from_file(str(RERANK / "bert-cross-encoder-tiny" / "tokenizer.json"))
    reference.enable_truncation(64, strategy="longest_first", direction="left")
    want = [e.ids for e in reference.encode_batch([(case["query"], d) for d in case["documents"]])]
    assert [p.ids for p in pairs] == want and want[0] != case["pairs"][0]["input_ids"]
    assert [len(p) for p in pairs] == [64, 45]


@pytest.mark.parametrize("folder", FOLDERS)
def test_pair_and_document_token_limits(folder):
    """max_tokens (vLLM's truncate_prompt_tokens) is the library's longest-first cut at that many tokens, from
    either side; doc_tokens (Cohere's max_tokens_per_doc) cuts only the document, before pairing; and however many
    limits are asked, one truncating tokenizer per side is kept (a copy holds the whole vocabulary)."""
    from tokenizers import Tokenizer

    enc = load(folder)
    query, documents = "what is berlin", ["berlin is the capital of germany " * n + "the end" for n in (1, 4, 30)]
    reference = Tokenizer.from_file(str(RERANK / folder / "tokenizer.json"))
    for limit in (12, 20, 33):
        for side in ("right", "left"):
            reference.enable_truncation(limit, strategy="longest_first", direction=side)
            want = [(e.ids, e.type_ids) for e in reference.encode_batch([(query, d) for d in documents])]
            got = enc.tokenize_pairs(query, documents, truncate=True, truncation_direction=side, max_tokens=limit)
            assert [(p.ids, p.token_types) for p in got] == want, (limit, side)
    assert len(enc.tokenizer._truncating) == 2
    plain = enc.tokenize_pairs(query, documents, truncate=False)
    assert enc.tokenize_pairs(query, documents, truncate=False, doc_tokens=10_000) == plain
    cut = enc.tokenize_pairs(query, documents, truncate=False, doc_tokens=5)
    tok = enc.tokenizer
    head = len(tok.encode([query])[0]) - tok.tail_specials  # the query and the specials before the document
    for pair, full in zip(cut, plain):
        assert pair.ids[:head] == full.ids[:head] and pair.ids[head : head + 5] == full.ids[head : head + 5]
        assert len(pair) == min(len(full), len(cut[0]))  # every document here has at least 5 tokens
    with pytest.raises(PairTooLong):
        enc.tokenize_pairs(query, documents, truncate=False, max_tokens=12)
    specials = len(enc.tokenize_pairs("", [""], truncate=False)[0])
    assert len(enc.tokenize_pairs(query, documents, truncate=True, max_tokens=specials)[2]) == specials
    with pytest.raises(InputError, match="pair template alone"):  # `tokenizers` would leave the pair whole
        enc.tokenize_pairs(query, documents, truncate=True, max_tokens=specials - 1)


def test_a_tokenizer_without_a_pair_template_is_a_load_error(tmp_path):
    folder = copy("xlmr-reranker-tiny", tmp_path)
    tokenizer = json.loads((folder / "tokenizer.json").read_text()) | {"post_processor": None}
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ModelError, match="no pair template"):
        load(folder)


@pytest.mark.parametrize("folder", FOLDERS[:2])  # the families whose head reads the first token only: BERT, XLM-R
@pytest.mark.parametrize("documents", [
    ["a short one", "a somewhat longer document about the city and its river", "word " * 60],  # the padded grid
    ["same length here"] * 3,  # equal lengths: the plain reshape
])
def test_the_last_layer_on_first_tokens_only_equals_the_whole_layer(folder, documents):
    """The scorer runs the last layer's out-projection and MLP on each pair's first token alone; the head's input
    and the logits are those of the whole last layer."""
    import torch

    from model.packing import cls_pool

    enc = load(folder)
    pairs = enc.tokenize_pairs("what is it", documents, truncate=True)
    types = [p.token_types for p in pairs] if folder.startswith("bert") else None
    batch = enc.prepare([p.ids for p in pairs], types)
    scorer = enc.model
    assert scorer.head.first_tokens_only
    with torch.inference_mode():
        whole = cls_pool(scorer.encoder(batch), batch)
        first = scorer.encoder(batch, first_tokens=True).float()
        torch.testing.assert_close(first, whole, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(scorer(batch), scorer.head(whole, batch), atol=1e-5, rtol=1e-5)
