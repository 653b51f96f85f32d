"""Tests of actzip.examples: offline data, example models and saved-activation capture."""

import socket
import sys

import pytest
import torch
from torch import nn

from actzip import examples


@pytest.fixture
def no_network(monkeypatch):
    """Makes any attempt to open a network connection fail the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return examples.load_digits_images(32, seed=0)


# --- digits -----------------------------------------------------------------------------

def test_load_digits_images_gives_stratified_normalized_split(digits):
    x_train, y_train, x_test, y_test = digits
    assert x_train.shape[1:] == (1, 32, 32) and x_test.shape[1:] == (1, 32, 32)
    assert x_train.dtype == x_test.dtype == torch.float32
    assert y_train.dtype == y_test.dtype == torch.int64
    assert x_train.shape[0] == y_train.shape[0] and x_test.shape[0] == y_test.shape[0]
    assert x_train.shape[0] + x_test.shape[0] == 1797
    test_counts = torch.bincount(y_test, minlength=10)
    all_counts = test_counts + torch.bincount(y_train, minlength=10)
    assert torch.all((test_counts.float() - 0.2 * all_counts.float()).abs() <= 1)
    assert abs(x_train.mean().item()) < 1e-4 and abs(x_train.std().item() - 1) < 1e-4


def test_load_digits_images_same_seed_same_tensors_and_seed_changes_split(digits):
    again = examples.load_digits_images(32, seed=0)
    for first, second in zip(digits, again):
        assert torch.equal(first, second)
    other = examples.load_digits_images(32, seed=1)
    assert not torch.equal(digits[3], other[3]) or not torch.equal(digits[1], other[1])


def test_load_digits_images_other_size_and_no_network(no_network):
    pytest.importorskip("sklearn")
    x_train, _, x_test, _ = examples.load_digits_images(16, seed=0)
    assert x_train.shape[1:] == (1, 16, 16) and x_test.shape[1:] == (1, 16, 16)


def test_load_digits_images_without_sklearn_names_the_demo_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"actzip\[demo\]"):
        examples.load_digits_images()


# --- ResNet18Small ----------------------------------------------------------------------

def test_resnet18small_has_resnet18_layout_and_classifies_a_batch():
    torch.manual_seed(0)
    model = examples.ResNet18Small(num_classes=10, in_channels=1, width=8)
    blocks = [m for m in model.modules() if isinstance(m, examples.BasicBlock)]
    assert len(blocks) == 8
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 8 * 2 + 3  # stem, two per block, three 1x1 shortcuts
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 10)
    assert examples.ResNet18Small(num_classes=4, in_channels=3, width=4)(torch.randn(2, 3, 16, 16)).shape == (2, 4)


# --- text -------------------------------------------------------------------------------

def test_load_text_corpus_is_deterministic_bounded_python_source(no_network):
    text = examples.load_text_corpus(50_000, seed=0)
    assert len(text) == 50_000
    assert text == examples.load_text_corpus(50_000, seed=0)
    assert text.startswith("# file: ") and "def " in text
    assert text != examples.load_text_corpus(50_000, seed=1)


def test_char_tokenizer_round_trips_bytes():
    tokenizer = examples.CharTokenizer()
    assert tokenizer.vocab_size == 256
    text = "def f(x):\n    return 'é✓'\n"
    tokens = tokenizer.encode(text)
    assert tokens.dtype == torch.int64 and tokens.numel() == len(text.encode("utf-8"))
    assert int(tokens.max()) < 256 and int(tokens.min()) >= 0
    assert tokenizer.decode(tokens) == text
    assert tokenizer.encode("").numel() == 0


def test_split_text_keeps_the_tail_for_validation():
    train, validation = examples.split_text("abcdefghij", 0.2)
    assert (train, validation) == ("abcdefgh", "ij")


def test_text_batches_targets_are_inputs_shifted_and_deterministic():
    text = examples.load_text_corpus(20_000)
    batches = examples.text_batches(text, 16, 4, generator=torch.Generator().manual_seed(3), num_batches=3)
    produced = list(batches)
    assert len(produced) == 3
    for inputs, targets in produced:
        assert inputs.shape == targets.shape == (4, 16)
        assert inputs.dtype == targets.dtype == torch.int64
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
    again = list(examples.text_batches(text, 16, 4, generator=torch.Generator().manual_seed(3), num_batches=3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(produced, again))
    with pytest.raises(ValueError):
        next(examples.text_batches("short", 16, 4, generator=torch.Generator()))


# --- TinyTransformer --------------------------------------------------------------------

def test_tiny_transformer_is_causal_and_uses_no_fused_attention():
    torch.manual_seed(0)
    model = examples.TinyTransformer(d_model=32, n_heads=4, n_layers=2, seq_len=16).eval()
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    tokens = torch.randint(0, 256, (2, 16))
    logits = model(tokens)
    assert logits.shape == (2, 16, 256)
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 256
    with torch.no_grad():
        assert torch.allclose(model(changed)[:, :10], logits[:, :10], atol=1e-6)
        assert not torch.allclose(model(changed)[:, 10:], logits[:, 10:])
    loss = model.loss(logits, tokens)
    assert loss.dim() == 0 and torch.isfinite(loss)
    with pytest.raises(ValueError):
        model(torch.zeros(1, 17, dtype=torch.int64))


# --- capture_saved_activations ----------------------------------------------------------

def test_capture_dedups_aliases_and_excludes_parameters():
    torch.manual_seed(0)
    # The in-place ReLU's output is saved by the ReLU and again, as the same storage, by
    # the second Linear: one capture. Both Linear weights are saved too: excluded.
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(inplace=True), nn.Linear(16, 4))
    x = torch.randn(5, 8)
    captured = examples.capture_saved_activations(model, x, min_bytes=0)
    assert [name for name, _ in captured] == ["0#0", "1#0"]
    assert torch.equal(captured[0][1], x)
    assert torch.equal(captured[1][1], torch.relu(model[0](x)))
    parameter_pointers = {p.untyped_storage().data_ptr() for p in model.parameters()}
    for _, tensor in captured:
        assert tensor.untyped_storage().data_ptr() not in parameter_pointers
        assert tensor.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()


class _SavesThenChangesInPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        s = torch.sigmoid(self.linear(x))  # saves its output s (version 0)
        s.mul_(2)  # s is now a new value of the same storage
        return torch.cos(s)  # saves s again (version 1)


def test_capture_keeps_both_versions_of_a_tensor_changed_in_place():
    torch.manual_seed(0)
    model = _SavesThenChangesInPlace()
    x = torch.randn(3, 4)
    captured = dict(examples.capture_saved_activations(model, x, min_bytes=0))
    expected = torch.sigmoid(model.linear(x)).detach()
    assert torch.equal(captured["linear#0"], x)
    assert torch.equal(captured["<model>#0"], expected)
    assert torch.equal(captured["<model>#1"], 2 * expected)


def test_capture_resnet_names_modules_filters_small_and_has_no_side_effect():
    torch.manual_seed(0)
    model = examples.ResNet18Small(width=8).eval()
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    inputs, targets = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    captured = examples.capture_saved_activations(
        model, inputs, lambda out: nn.functional.cross_entropy(out, targets), min_bytes=4096)
    assert not model.training
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name
    names = [name for name, _ in captured]
    assert len(names) == len(set(names))
    modules = dict(model.named_modules())
    kinds = {type(modules[name.rsplit("#", 1)[0]]) for name in names}
    assert kinds == {nn.Conv2d, nn.BatchNorm2d, nn.ReLU}
    assert "layer1.0.relu1#0" in names and "layer1.0.bn1#0" in names
    for _, tensor in captured:
        assert tensor.is_floating_point() and tensor.nbytes >= 4096
    relu_outputs = [t for name, t in captured if isinstance(modules[name.rsplit("#", 1)[0]], nn.ReLU)]
    assert all(bool((t >= 0).all()) for t in relu_outputs)


def test_capture_transformer_sees_softmax_gelu_layernorm_and_linear_inputs():
    torch.manual_seed(0)
    model = examples.TinyTransformer(d_model=32, n_heads=2, n_layers=1, seq_len=16)
    tokens = torch.randint(0, 256, (2, 16))
    captured = examples.capture_saved_activations(model, tokens, min_bytes=1024)
    modules = dict(model.named_modules())
    kinds = {type(modules[name.rsplit("#", 1)[0]]) for name, _ in captured if not name.startswith("<")}
    assert {nn.Softmax, nn.GELU, nn.LayerNorm, nn.Linear, examples.CausalSelfAttention} <= kinds
    probs = dict(captured)["blocks.0.attn.softmax#0"]
    assert probs.shape == (2, 2, 16, 16)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 2, 16))
    assert bool((probs.triu(1) == 0).all())
