"""ModernBERT against transformers' ModernBertModel (tests/data/golden/modernbert): both config forms, mean and CLS
pooling, texts around the sliding window batched together; the window holds on every packed-attention path."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from model.architectures import parse_config
from model.encoder import Encoder
from model.errors import ConfigError
from model.modernbert import ModernBert, ModernBertConfig
from model.packing import pack
from tests.conftest import GOLDEN, load_golden, unpad

MODERNBERT = GOLDEN / "modernbert"
FOLDERS = ["modernbert-embed-tiny", "modernbert-embed-tiny-legacy-config", "modernbert-embed-tiny-cls"]
ATOL = 2e-5  # goldens are rounded to 6 decimals


def load(folder) -> Encoder:
    return Encoder.load(str(MODERNBERT / folder), device="cpu", dtype="float32")


@pytest.mark.parametrize("folder", FOLDERS)
def test_goldens_alone_and_batched(folder):
    enc = load(folder)
    key = "cls_pooled_l2" if folder.endswith("-cls") else "mean_pooled_l2"
    assert enc.info.pooling == key.split("_")[0]
    cases = load_golden(MODERNBERT / folder)["cases"]
    ids = enc.tokenize([c["text"] for c in cases])
    assert ids == [c["input_ids"] for c in cases]
    want = np.array([c[key] for c in cases])
    np.testing.assert_allclose(enc.embed(ids), want, atol=ATOL)  # 3 to 200 tokens in one packed batch
    for tokens, row in zip(ids, want):
        np.testing.assert_allclose(enc.embed([tokens])[0], row, atol=ATOL)


def test_padded_batch_rows_and_last_hidden_state():
    enc = load("modernbert-embed-tiny")
    golden = load_golden(MODERNBERT / "modernbert-embed-tiny")
    batch = golden["padded_batch"]
    ids = unpad(batch["input_ids"], batch["attention_mask"])
    np.testing.assert_allclose(enc.embed(ids), batch["mean_pooled_l2"], atol=ATOL)
    single = golden["single"]
    with torch.inference_mode():
        hidden = enc.model(pack([single["input_ids"]]))
    np.testing.assert_allclose(hidden.numpy(), single["last_hidden_state"], atol=ATOL)


def test_the_window_matters_on_the_longest_text():
    """Run without the window, the 200-token text moves by the golden's recorded shift: the window is really used."""
    golden = load_golden(MODERNBERT / "modernbert-embed-tiny")
    enc = load("modernbert-embed-tiny")
    longest = max(golden["cases"], key=lambda c: c["n_tokens"])
    for layer in enc.model.layers:
        layer.attn.window = None
    shift = np.abs(enc.embed([longest["input_ids"]])[0] - longest["mean_pooled_l2"]).max()
    assert shift == pytest.approx(golden["no_window_mean_pooled_l2_shift_on_longest_text"], abs=1e-4)


def local_only_model(seed: int = 0) -> ModernBert:
    """One local layer with a window of +-2, seeded weights: position i may depend on tokens i-2 .. i+2 only."""
    config = ModernBertConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                              num_attention_heads=2, local_attention=4, layer_types=("sliding_attention",))
    torch.manual_seed(seed)
    model = ModernBert(config)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


@pytest.mark.parametrize(
    "lengths",
    [
        [9, 9, 9],  # equal lengths: the uniform grid
        [3, 5, 6, 7, 12],  # around the window size: the padded grid with a key mask
        [70, 3, 64, 5],  # lengths far apart: attention per sequence
    ],
)
def test_a_token_sees_only_its_window_in_its_own_sequence(lengths):
    model = local_only_model()
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(0, 64, n)) for n in lengths]
    with torch.inference_mode():
        base = model(pack(seqs))
        for s, seq in enumerate(seqs):
            for j in range(len(seq)):  # change one token; only its own sequence's window may move
                changed = [list(x) for x in seqs]
                changed[s][j] = (seq[j] + 1) % 64
                out = model(pack(changed))
                start = sum(lengths[:s])
                moved = (out - base).abs().amax(dim=-1) > 0  # (T,)
                expect = torch.zeros_like(moved)
                expect[start + max(0, j - 2) : start + min(len(seq), j + 3)] = True
                assert torch.equal(moved, expect), (lengths, s, j)
        alone = torch.cat([model(pack([seq])) for seq in seqs])
    torch.testing.assert_close(base, alone, atol=1e-6, rtol=1e-6)


def config_of(folder: str) -> dict:
    return json.loads((MODERNBERT / folder / "config.json").read_text())


def test_both_config_forms_map_to_the_same_config():
    v5, legacy = (parse_config(config_of(f)) for f in FOLDERS[:2])
    assert v5 == legacy
    assert v5.layer_types == ("full_attention", "sliding_attention", "sliding_attention", "full_attention")
    assert (v5.global_rope_theta, v5.local_rope_theta, v5.window) == (160000.0, 10000.0, 4)


@pytest.mark.parametrize(
    "change, names",
    [
        ({"global_attn_every_n_layers": 2}, ["global_attn_every_n_layers=2", "layer_types="]),
        ({"global_rope_theta": 80000.0}, ["global_rope_theta=80000.0", "rope_parameters.full_attention.rope_theta"]),
        ({"local_rope_theta": 5000.0}, ["local_rope_theta=5000.0", "rope_parameters.sliding_attention.rope_theta"]),
    ],
)
def test_disagreeing_forms_fail_naming_both(change, names):
    with pytest.raises(ConfigError) as err:
        parse_config(config_of("modernbert-embed-tiny") | change)
    assert all(name in str(err.value) for name in names), str(err.value)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 2.0}}}, "rope_type='yarn'"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling="),
        ({"layer_types": ["full_attention"] * 3}, "layer_types="),
        ({"layer_types": ["full_attention", "chunked_attention"] * 2}, "layer_types="),
        ({"hidden_activation": "mish"}, "hidden_activation='mish'"),
        ({"classifier_pooling": "max"}, "classifier_pooling='max'"),
        ({"num_attention_heads": 5}, "num_attention_heads=5"),
    ],
)
def test_unsupported_config_values_name_the_field(change, field):
    config = config_of("modernbert-embed-tiny")
    if "layer_types" in change:
        config.pop("global_attn_every_n_layers")
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("(", r"\(")):
        parse_config(config | change)


def test_legacy_form_defaults(tmp_path):
    """Without any attention keys: every third layer global from layer 0, thetas 160k / 10k (transformers')."""
    config = {k: v for k, v in config_of("modernbert-embed-tiny-legacy-config").items()
              if k not in ("global_attn_every_n_layers", "global_rope_theta", "local_rope_theta")}
    parsed = parse_config(config)
    assert list(parsed.layer_types) == config_of("modernbert-embed-tiny")["layer_types"]
    assert parsed.local_rope_theta == 1e4
    folder = tmp_path / "m"
    shutil.copytree(MODERNBERT / "modernbert-embed-tiny-legacy-config", folder)
    (folder / "config.json").write_text(json.dumps(config))
    cases = load_golden(MODERNBERT / "modernbert-embed-tiny")["cases"]
    enc = Encoder.load(str(folder), device="cpu", dtype="float32")
    np.testing.assert_allclose(enc.embed([c["input_ids"] for c in cases]), [c["mean_pooled_l2"] for c in cases],
                               atol=ATOL)
