"""Small, offline example data and models whose saved activations are real.

Everything here works without a network connection and is deterministic for a given
seed, so the training demo, the tests and the benchmarks can share it:

- :func:`load_digits_images`: scikit-learn's bundled 8x8 digits, upsampled to an image size
  a CNN can use.
- :class:`ResNet18Small`: a ResNet-18-style CNN of plain ``torch.nn`` modules.
- :func:`load_text_corpus`, :class:`CharTokenizer`, :func:`split_text`, :func:`text_batches`:
  next-character prediction on the Python standard library's own source files.
- :class:`TinyTransformer`: a small causal transformer language model whose attention is
  written out (no fused kernels), so the tensors it saves for backward are the ones a
  textbook transformer saves.
- :func:`capture_saved_activations`: the distinct floating-point tensors a forward pass
  saves for backward, each named after the module that saved it.

Only torch (and scikit-learn for the digits) is needed; the codec is not imported.
"""

from __future__ import annotations

import math
import os
import random
import sysconfig
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "load_digits_images",
    "ResNet18Small",
    "BasicBlock",
    "load_text_corpus",
    "CharTokenizer",
    "split_text",
    "text_batches",
    "TinyTransformer",
    "capture_saved_activations",
]


# ---------------------------------------------------------------------------------------
# Images: scikit-learn's digits
# ---------------------------------------------------------------------------------------

def load_digits_images(
    size: int = 32, *, seed: int = 0, test_fraction: float = 0.2
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(x_train, y_train, x_test, y_test)`` built from scikit-learn's digits.

    The 1797 8x8 grey images ship inside scikit-learn, so nothing is downloaded. They are
    scaled to [0, 1], upsampled to ``size x size`` by bilinear interpolation, then
    standardized with the mean and standard deviation of the training pixels.

    Shapes: ``x_*`` is float32 ``(N, 1, size, size)``; ``y_*`` is int64 ``(N,)`` with labels
    0 to 9. The split is stratified: ``test_fraction`` of each class (rounded) goes to the
    test set, chosen by ``seed``; the same seed always gives the same tensors.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_digits_images needs scikit-learn, an optional dependency of actzip; "
            "install it with `pip install actzip[demo]` (or `pip install scikit-learn`)"
        ) from exc
    if size < 8:
        raise ValueError(f"size must be at least 8 (the digits are 8x8), got {size}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")

    digits = load_digits()
    # Pixel intensities in the bundled data are integers 0..16.
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)

    generator = torch.Generator().manual_seed(seed)
    train_parts, test_parts = [], []
    for label in range(int(labels.max()) + 1):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        n_test = int(round(test_fraction * members.numel()))
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])
    # Shuffle across classes so that consecutive training samples are not all one digit.
    train_index = torch.cat(train_parts)
    train_index = train_index[torch.randperm(train_index.numel(), generator=generator)]
    test_index = torch.cat(test_parts).sort().values

    x_train, x_test = images[train_index], images[test_index]
    mean, std = x_train.mean(), x_train.std()
    x_train = ((x_train - mean) / std).contiguous()
    x_test = ((x_test - mean) / std).contiguous()
    return x_train, labels[train_index].clone(), x_test, labels[test_index].clone()


# ---------------------------------------------------------------------------------------
# A ResNet-18-style CNN
# ---------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN) shortcut, as in ResNet-18."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return self.relu2(out)


class ResNet18Small(nn.Module):
    """ResNet-18 layout (BasicBlock x [2, 2, 2, 2]) with a CIFAR-style stem, for small images.

    The stem is a 3x3 stride-1 convolution with no max-pool; the four stages have
    ``width``, ``2 width``, ``4 width`` and ``8 width`` channels, the last three starting
    with stride 2. ReLUs are in place, as in torchvision's ResNet, so each ReLU output is
    also the saved input of the next convolution (one storage, saved twice).

    ``width=32`` (half of ResNet-18's 64) keeps a training step on 64 images of 32x32 well
    under a second on two CPU cores.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be positive, got {width}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stage_channels = [width, 2 * width, 4 * width, 8 * width]
        stage_strides = [1, 2, 2, 2]
        stages = []
        channels = width
        for out_channels, stride in zip(stage_channels, stage_strides):
            stages.append(
                nn.Sequential(
                    BasicBlock(channels, out_channels, stride),
                    BasicBlock(out_channels, out_channels, 1),
                )
            )
            channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(self.pool(out), 1))


# ---------------------------------------------------------------------------------------
# Text: the Python standard library's source
# ---------------------------------------------------------------------------------------

def _stdlib_source_files() -> List[Path]:
    """The ``.py`` files of the standard library, sorted by their path relative to it."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    # Third-party packages can live under the stdlib folder and differ between machines;
    # pruning them (and bytecode caches) also keeps the walk fast.
    excluded = {"site-packages", "dist-packages", "__pycache__"}
    relative_paths = []
    for folder, subfolders, filenames in os.walk(stdlib):
        subfolders[:] = [name for name in subfolders if name not in excluded]
        base = Path(folder).relative_to(stdlib)
        relative_paths.extend(
            (base / name).as_posix() for name in filenames if name.endswith(".py")
        )
    return [stdlib / relative for relative in sorted(relative_paths)]


def load_text_corpus(max_chars: int = 2_000_000, *, seed: int = 0) -> str:
    """Return up to ``max_chars`` characters of Python standard library source code.

    The ``.py`` files under ``sysconfig.get_paths()["stdlib"]`` (third-party
    ``site-packages`` excluded) are listed in sorted order, then shuffled by ``seed`` so
    that a short corpus mixes many modules instead of the first few alphabetically. They
    are joined, each preceded by a ``# file: <relative path>`` line, and the result is cut
    at ``max_chars``. The same seed and Python installation always give the same string.
    """
    if max_chars <= 0:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    files = _stdlib_source_files()
    if not files:
        raise RuntimeError("found no .py files under the Python standard library folder")
    random.Random(seed).shuffle(files)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    pieces: List[str] = []
    total = 0
    for path in files:
        try:
            text = path.read_bytes().decode("utf-8", errors="replace")
        except OSError:  # a dangling link or an unreadable file: not part of the corpus
            continue
        piece = f"# file: {path.relative_to(stdlib).as_posix()}\n{text}\n"
        pieces.append(piece)
        total += len(piece)
        if total >= max_chars:
            break
    return "".join(pieces)[:max_chars]


class CharTokenizer:
    """Byte-level tokenizer: a token is one byte of the UTF-8 encoding (vocabulary 256)."""

    vocab_size = 256

    def encode(self, text: str) -> torch.Tensor:
        """Return the UTF-8 bytes of ``text`` as an int64 tensor of shape ``(len(bytes),)``."""
        data = bytearray(text.encode("utf-8"))
        if not data:
            return torch.empty(0, dtype=torch.int64)
        return torch.frombuffer(data, dtype=torch.uint8).to(torch.int64)

    def decode(self, tokens: Union[torch.Tensor, Sequence[int]]) -> str:
        """Inverse of :meth:`encode`; invalid UTF-8 (a cut sequence) becomes U+FFFD."""
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.flatten().tolist()
        return bytes(int(token) for token in tokens).decode("utf-8", errors="replace")


def split_text(text: str, validation_fraction: float = 0.1) -> Tuple[str, str]:
    """Split ``text`` into ``(train, validation)``: the validation part is the tail."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    cut = int(len(text) * (1.0 - validation_fraction))
    return text[:cut], text[cut:]


def text_batches(
    text: Union[str, torch.Tensor],
    seq_len: int,
    batch_size: int,
    *,
    generator: torch.Generator,
    num_batches: Optional[int] = None,
) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(inputs, targets)`` int64 tensors of shape ``(batch_size, seq_len)``.

    Each row is a window of the byte-encoded text starting at an offset drawn from
    ``generator``; ``targets`` is ``inputs`` shifted by one token (next-byte prediction).
    ``text`` is a string (encoded with :class:`CharTokenizer`) or already-encoded tokens.
    Yields forever unless ``num_batches`` is given. Use :func:`split_text` first to keep
    a validation part apart.
    """
    tokens = CharTokenizer().encode(text) if isinstance(text, str) else text.to(torch.int64)
    if tokens.dim() != 1:
        raise ValueError("tokens must be one-dimensional")
    if tokens.numel() < seq_len + 1:
        raise ValueError(f"the text has {tokens.numel()} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    window = torch.arange(seq_len + 1)
    produced = 0
    while num_batches is None or produced < num_batches:
        starts = torch.randint(0, tokens.numel() - seq_len, (batch_size, 1), generator=generator)
        rows = tokens[starts + window]
        yield rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
        produced += 1


# ---------------------------------------------------------------------------------------
# A small causal transformer language model
# ---------------------------------------------------------------------------------------

class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention written out: scores, mask, softmax, dropout, mix.

    Softmax and dropout are modules so the tensors they save carry their names; the two
    matrix products run in this module and save ``q``, ``k``, the dropped-out attention
    probabilities and ``v`` under its name.
    """

    def __init__(self, d_model: int, n_heads: int, seq_len: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.softmax = nn.Softmax(dim=-1)
        self.attn_dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(d_model, d_model)
        self.resid_dropout = nn.Dropout(dropout)
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)
        self.register_buffer("future_mask", causal, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, d_model = x.shape
        q, k, v = self.qkv(x).split(d_model, dim=-1)
        # (batch, heads, length, head_dim)
        q = q.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        scores = scores.masked_fill(self.future_mask[:length, :length], float("-inf"))
        probs = self.attn_dropout(self.softmax(scores))
        mixed = (probs @ v).transpose(1, 2).reshape(batch, length, d_model)
        return self.resid_dropout(self.proj(mixed))


class FeedForward(nn.Module):
    """Linear (4x wider), GELU, Linear, dropout."""

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.gelu = nn.GELU()
        self.fc2 = nn.Linear(4 * d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.gelu(self.fc1(x))))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, d_model: int, n_heads: int, seq_len: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, seq_len, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = FeedForward(d_model, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyTransformer(nn.Module):
    """A small GPT-style causal language model over bytes.

    Token and learned position embeddings, ``n_layers`` pre-LayerNorm blocks, a final
    LayerNorm and a linear head. ``forward(tokens)`` takes int64 ``(batch, length)`` with
    ``length <= seq_len`` and returns logits ``(batch, length, vocab)``; use
    :meth:`loss` for the next-token cross-entropy.
    """

    def __init__(
        self,
        vocab: int = 256,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 2,
        seq_len: int = 128,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.token_embedding = nn.Embedding(vocab, d_model)
        self.position_embedding = nn.Embedding(seq_len, d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, seq_len, dropout) for _ in range(n_layers)
        )
        self.ln_final = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[-1]
        if length > self.seq_len:
            raise ValueError(f"sequence length {length} exceeds the model's seq_len {self.seq_len}")
        positions = torch.arange(length, device=tokens.device)
        x = self.dropout(self.token_embedding(tokens) + self.position_embedding(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_final(x))

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of ``logits`` (B, T, V) against ``targets`` (B, T)."""
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


# ---------------------------------------------------------------------------------------
# What a forward pass saves for backward
# ---------------------------------------------------------------------------------------

def capture_saved_activations(
    model: nn.Module,
    inputs: Union[torch.Tensor, Sequence[torch.Tensor]],
    loss_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    *,
    min_bytes: int = 65536,
) -> List[Tuple[str, torch.Tensor]]:
    """Run one training-mode forward and return the distinct tensors it saves for backward.

    The forward (and ``loss_fn(output)`` when given, e.g. a cross-entropy against fixed
    targets) runs under :class:`torch.autograd.graph.saved_tensors_hooks`; no backward is
    run. Kept: floating-point tensors of at least ``min_bytes`` bytes that share no
    storage with a parameter or buffer of ``model``. Two saves are the same tensor when
    storage, storage offset, shape, strides, dtype and version counter all match (an
    in-place ReLU's output that the next convolution saves again counts once, under the
    first saver's name).

    Returns ``[(name, tensor), ...]`` in the order they were saved. ``name`` is the
    qualified name of the innermost module running when the tensor was saved (tracked by
    forward pre-hooks), ``"<model>"`` outside any submodule, followed by ``#i`` where ``i``
    counts the distinct tensors that module saved (``"layer1.0.relu1#0"``). Each tensor is
    a detached clone taken when it was saved, so later in-place changes do not reach it.

    The model is put in training mode for the call and restored afterwards, and its
    buffers (BatchNorm running statistics) are restored too, so capturing has no side
    effect on the model.
    """
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    excluded_storages = {
        tensor.untyped_storage().data_ptr()
        for tensor in list(model.parameters()) + list(model.buffers())
        if tensor.numel() > 0
    }

    module_stack: List[str] = []
    handles = []

    def make_pre_hook(name: str):
        def pre_hook(module, args):
            module_stack.append(name)
        return pre_hook

    def post_hook(module, args, output):
        module_stack.pop()

    for name, module in model.named_modules():
        if module is model:
            continue
        handles.append(module.register_forward_pre_hook(make_pre_hook(name)))
        handles.append(module.register_forward_hook(post_hook, always_call=True))

    captured: List[Tuple[str, torch.Tensor]] = []
    seen = set()
    saves_per_module: dict = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if not tensor.is_floating_point() or tensor.numel() == 0:
            return tensor
        if tensor.numel() * tensor.element_size() < min_bytes:
            return tensor
        storage_ptr = tensor.untyped_storage().data_ptr()
        if storage_ptr in excluded_storages:
            return tensor
        key = (
            storage_ptr,
            tensor.storage_offset(),
            tuple(tensor.shape),
            tuple(tensor.stride()),
            tensor.dtype,
            tensor._version,
        )
        if key in seen:
            return tensor
        seen.add(key)
        owner = module_stack[-1] if module_stack else "<model>"
        index = saves_per_module.get(owner, 0)
        saves_per_module[owner] = index + 1
        captured.append((f"{owner}#{index}", tensor.detach().clone()))
        return tensor

    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    was_training = model.training
    saved_buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    try:
        model.train()
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            output = model(*inputs)
            if loss_fn is not None:
                loss_fn(output)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(saved_buffers[name])
    return captured
