"""The tiny models: shipped weights match their cards, and the training script reproduces them."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from unveiled import data_file, zoo
from unveiled.models import Decoder, DecoderConfig
from unveiled.text import shakespeare_tokenizer
from unveiled.threads import torch_threads


@pytest.fixture
def card_threads():
    """Run with the thread count the shipped card was trained with, so float reductions are comparable."""
    with torch_threads(zoo.card("S")["machine"]["torch_threads"]):
        yield


def test_registry_shapes():
    s, m = zoo.ZOO["S"].config, zoo.ZOO["M"].config
    assert s.num_parameters() == 377_600 and m.num_parameters() == 1_636_224
    assert (s.hidden_size, s.num_layers, s.num_heads, s.num_kv_heads) == (128, 2, 4, 2)
    assert (m.hidden_size, m.num_layers, m.num_heads, m.num_kv_heads) == (192, 4, 6, 3)
    assert s.vocab_size == m.vocab_size == shakespeare_tokenizer().vocab_size
    with pytest.raises(ValueError, match="Did you mean"):
        zoo.load("SS")


@pytest.mark.parametrize("name", ["S", "M"])
def test_shipped_model_matches_its_card(name):
    card = zoo.card(name)
    model = zoo.load(name)
    assert isinstance(model, Decoder) and not model.training
    assert DecoderConfig.from_dict(card["config"]) == zoo.ZOO[name].config
    assert card["parameters"] == model.num_parameters()
    assert card["training"]["steps"] == zoo.ZOO[name].settings.steps
    assert card["tokenizer"]["chars"] == shakespeare_tokenizer().chars
    for key in ("train_time_s", "machine", "versions", "date", "weights_sha256"):
        assert card[key]
    # The last training-curve point (fp32, first 16k validation characters) is re-measured on the shipped
    # fp16 weights; fp16 rounding moves it by far less than the tolerance. (The appendix page re-measures the
    # full-split number, which takes longer.)
    last = card["curve"][-1]
    assert last["step"] == card["training"]["steps"]
    assert zoo.val_loss(model, max_chars=card["training"]["eval_chars"]) == pytest.approx(last["val_loss_16k"], abs=1e-3)
    assert card["val"]["nats_per_char"] == pytest.approx(card["val"]["nats_per_char_fp32_before_export"], abs=1e-3)


def test_m_is_better_than_s_and_both_learned():
    s, m = zoo.card("S")["val"]["nats_per_char"], zoo.card("M")["val"]["nats_per_char"]
    assert m < s < 1.9  # a unigram model of the text scores about 3.3 nats/char
    assert m > 1.4


def test_retraining_reproduces_the_first_steps_of_the_shipped_run(card_threads):
    card = zoo.card("S")
    rep = card["reproducibility"]
    result = zoo.train("S", stop_after=max(rep["check_steps"]), progress=False, evaluate=False)
    got = [result.log.train_loss.iloc[s - 1] for s in rep["check_steps"]]
    assert got == pytest.approx(rep["train_loss"], abs=rep["tolerance"])


def test_training_is_deterministic(card_threads):
    a = zoo.train("S", stop_after=4, progress=False, evaluate=False)
    b = zoo.train("S", stop_after=4, progress=False, evaluate=False)
    assert a.log.train_loss.tolist() == b.log.train_loss.tolist()
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True))


def test_learning_rate_schedule():
    s = zoo.ZOO["M"].settings
    lrs = [zoo.lr_at(i, s) for i in range(s.steps)]
    warm = round(0.03 * s.steps)
    assert lrs[warm - 1] == pytest.approx(s.lr)
    assert all(a < b for a, b in itertools.pairwise(lrs[:warm]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[warm:]))
    assert lrs[-1] >= s.lr * s.min_lr_ratio and lrs[-1] < 1.01 * s.lr * s.min_lr_ratio


def test_damaged_weights_are_refused(monkeypatch):
    real = zoo.card

    def bad_card(name):
        info = real(name)
        return {**info, "weights_sha256": "0" * 64}

    monkeypatch.setattr(zoo, "card", bad_card)
    with pytest.raises(ValueError, match="corrupt or was replaced"):
        zoo.load("S")


@pytest.mark.slow
def test_command_line_writes_weights_and_cards(tmp_path, card_threads):
    assert zoo.main(["train", "S", "--steps", "2", "--threads", "1", "--out", str(tmp_path)]) == 0
    info = json.loads((tmp_path / "tiny-s.json").read_text())
    assert info["training"]["steps"] == 2 and (tmp_path / "tiny-s.safetensors").is_file()
    assert "# Model card: S" in (tmp_path / "tiny-s.md").read_text()
    assert math.isfinite(info["val"]["nats_per_char"])


@pytest.mark.parametrize("name,stem", [("S", "tiny-s"), ("M", "tiny-m")])
def test_analyzer_configs_describe_the_zoo_models(name, stem):
    cfg = json.loads(data_file(f"model_configs/{stem}.json").read_text())
    assert DecoderConfig.from_hf_config(cfg) == zoo.ZOO[name].config


def test_analyzer_config_of_smollm2():
    from unveiled.smollm2 import SMOLLM2_CONFIG

    cfg = json.loads(data_file("model_configs/smollm2-135m.json").read_text())
    assert DecoderConfig.from_hf_config(cfg) == SMOLLM2_CONFIG
