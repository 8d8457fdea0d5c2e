"""The same Myrtle recipes in PyTorch, to compare speed and accuracy with the JAX trainer.

Run `python -m jax_resnet_speed.torch_reference --help`. Every number comes from
jax_resnet_speed.presets, the data from the same data layer and cache, and the flags,
table and JSON file are the JAX trainer's (see docs/compare.md for what is kept identical).

Nothing here imports JAX: on a GPU machine a JAX computation would grab most of the GPU memory.
The recipes, run settings, flags, epoch loop and data layer it shares with the JAX trainer are
plain Python (tests/test_torch_reference.py checks that JAX stays out of sys.modules).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from jax_resnet_speed import install_hint

INSTALL_HINT = f"PyTorch is not installed; {install_hint('torch')}"
try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as error:
    if __name__ == "__main__":
        raise SystemExit(f"error: {INSTALL_HINT}") from None
    raise ImportError(INSTALL_HINT) from error

from jax_resnet_speed import cli, flags, interrupt, loop, settings, torch_pieces
from jax_resnet_speed.data import DataError, Dataset
from jax_resnet_speed.presets import UNTRAINED_WHITENING_BIAS, Data, Network as NetworkSpec, Recipe, WhiteningBias
from jax_resnet_speed.settings import EVAL_BATCH, IMAGE_SIZE, RunConfig

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# ----------------------------------------------------------------------------- the network

class GhostBatchNorm(nn.Module):
    """BatchNorm over `splits` contiguous slices of the batch (model.GhostBatchNorm).

    Each slice is normalised with its own mean and biased variance; the running statistics
    (float32) move towards the mean over slices of the slice means and unbiased variances.
    It runs in float32, or in the compute dtype where the network asks for that
    (`batch_norm.fp32=False`, posts 1-2); parameters and running statistics stay float32.
    """

    def __init__(self, channels: int, spec: NetworkSpec, dtype: torch.dtype):
        super().__init__()
        bn = spec.batch_norm
        self.splits, self.momentum, self.eps = bn.ghost_splits, bn.momentum, bn.eps
        self.dtype = torch.float32 if bn.fp32 else dtype
        if bn.scale_frozen:
            self.weight = None
        else:
            # "uniform": PyTorch 0.4's U(0, 1) draw, which the early posts ran with.
            scale = torch.rand(channels) if bn.scale_init == "uniform" else torch.ones(channels)
            self.weight = nn.Parameter(scale)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        if not self.training or self.splits == 1:
            # One split is plain batch norm: let cuDNN do it (for a half-precision input, with
            # the float32 parameters and statistics of PyTorch's mixed-type batch norm).
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                self.training, self.momentum, self.eps)
        n, c, h, w = x.shape
        slices = x.reshape(self.splits, n // self.splits, c, h, w)
        var, mean = torch.var_mean(slices, dim=(1, 3, 4), correction=0, keepdim=True)
        y = ((slices - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape)
        self._update_running_stats(mean.float(), var.float(), count=slices[0].numel() // c)
        if self.weight is not None:
            y = y * self.weight.to(y.dtype).view(1, c, 1, 1)
        return y + self.bias.to(y.dtype).view(1, c, 1, 1)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        m = self.momentum
        unbiased = var.mean(0).flatten() * (count / max(count - 1, 1))
        self.running_mean.mul_(1 - m).add_(mean.mean(0).flatten(), alpha=m)
        self.running_var.mul_(1 - m).add_(unbiased, alpha=m)


def activation(spec: NetworkSpec, kind: str | None = None) -> nn.Module:
    """The recipe's activation, or the one named `kind`."""
    kind = kind or spec.activation
    if kind == "gelu":
        return nn.GELU()
    if kind == "silu":
        return nn.SiLU()
    return nn.CELU(spec.celu_alpha) if kind == "celu" else nn.ReLU()


def conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, init: str = "torch") -> nn.Conv2d:
    """A bias-free conv padded k // 2 on every side (model.conv); "dirac": the first C_in filters the identity."""
    layer = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)
    if init == "dirac":
        with torch.no_grad():
            nn.init.dirac_(layer.weight[:in_channels])
    return layer


class ConvBlock(nn.Module):
    """conv -> BN -> act (post-activation), with an optional 2x2 max-pool after the conv or at the end."""

    def __init__(self, in_channels: int, out_channels: int, spec: NetworkSpec, dtype: torch.dtype,
                 pool: bool = False, kernel: int = 3, stride: int = 1, activate: bool = True):
        super().__init__()
        self.conv = conv(in_channels, out_channels, kernel, stride, spec.conv_init)
        self.bn = GhostBatchNorm(out_channels, spec, dtype)
        self.act = activation(spec)
        self.activate = activate  # False: end at the BN, in its dtype (model.ConvBlock)
        self.pool_first = pool and spec.stages.pool_before_bn
        self.pool_last = pool and not spec.stages.pool_before_bn
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.pool_first:
            x = F.max_pool2d(x, 2)
        if not self.activate:
            return self.bn(x)
        # BN and the activation run in the BN's dtype; what the next conv reads is in the compute dtype.
        x = self.act(self.bn(x)).to(self.dtype)
        if self.pool_last:
            x = F.max_pool2d(x, 2)
        return x


class Residual(nn.Module):
    """x + two post-activation conv blocks of x."""

    def __init__(self, channels: int, spec: NetworkSpec, dtype: torch.dtype):
        super().__init__()
        self.block0 = ConvBlock(channels, channels, spec, dtype)
        self.block1 = ConvBlock(channels, channels, spec, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block1(self.block0(x))


class PreActBlock(nn.Module):
    """model.PreActBlock: o = act(bn1(x)); conv2(act(bn2(conv1(o)))) + shortcut.

    The shortcut is x itself, or a strided 1x1 conv of o where the shape changes.
    """

    def __init__(self, in_channels: int, out_channels: int, spec: NetworkSpec, dtype: torch.dtype, stride: int = 1):
        super().__init__()
        self.bn1 = GhostBatchNorm(in_channels, spec, dtype)
        self.conv1 = conv(in_channels, out_channels, 3, stride)
        self.bn2 = GhostBatchNorm(out_channels, spec, dtype)
        self.conv2 = conv(out_channels, out_channels, 3)
        projects = stride != 1 or in_channels != out_channels
        self.shortcut = conv(in_channels, out_channels, 1, stride) if projects else None
        self.act = activation(spec)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act(self.bn1(x)).to(self.dtype)
        shortcut = x if self.shortcut is None else self.shortcut(o)
        y = self.act(self.bn2(self.conv1(o))).to(self.dtype)
        return self.conv2(y) + shortcut


class Network(nn.Module):
    """model.Network in PyTorch: every network of the series, built from the same presets.Network.

    The modules and their names are the Flax ones: the stem `prep` (a ConvBlock, or a bare conv
    without `stem.bn`), stage i's post-activation conv `layer{i}` and its residual blocks
    `res{i}`, `res{i}_2`, ..., or its pre-activation blocks `layer{i}_1`, `layer{i}_2`, ...;
    the head `classifier`. Inside them Flax's Conv_0 is `conv`, GhostBatchNorm_0 `bn`, a
    residual block's ConvBlock_0 and ConvBlock_1 `block0` and `block1`.
    """

    def __init__(self, spec: NetworkSpec, widths: Sequence[int], dtype: torch.dtype,
                 whitening: np.ndarray | None, num_classes: int = 10):
        super().__init__()
        stem_width, *stage_widths = widths
        self.spec = spec
        if spec.stem.kind == "whitening":
            # Frozen (27, 3, 3, 3) filters: a buffer, so neither trained nor averaged.
            self.register_buffer("whitening", torch.as_tensor(whitening, dtype=torch.float32))
            self.prep = ConvBlock(27, stem_width, spec, dtype, kernel=1)
        elif spec.stem.kind == "whitening-bias":
            # airbench: frozen (24, 3, 2, 2) filters and their negations, unpadded, and a learnable bias.
            self.register_buffer("whitening", torch.as_tensor(whitening, dtype=torch.float32))
            self.whitening_bias = nn.Parameter(torch.zeros(stem_width))
            if spec.stem.bias_init == "torch":  # nn.Conv2d's default bias draw over 3 k k inputs
                bound = 1 / math.sqrt(3 * spec.stem.whitening_kernel ** 2)
                nn.init.uniform_(self.whitening_bias, -bound, bound)
            self.prep = activation(spec, spec.stem.activation)
        else:
            self.register_buffer("whitening", None)
            self.prep = ConvBlock(3, stem_width, spec, dtype) if spec.stem.bn else conv(3, stem_width, 3)
        self.body: list[str] = []  # the names of the modules after the stem, in order
        self.residual_over: dict[str, str] = {}  # a module -> the earlier one whose output its own adds
        channels = stem_width
        stages = spec.stages
        layout = zip(stage_widths, stages.downsamples, stages.residual_blocks)
        for i, (width, downsamples, blocks) in enumerate(layout, 1):
            if stages.block == "pre-act":
                for j in range(blocks):
                    stride = 2 if downsamples and j == 0 else 1
                    self._add(f"layer{i}_{j + 1}", PreActBlock(channels, width, spec, dtype, stride))
                    channels = width
                continue
            pool = downsamples and stages.downsample == "maxpool"
            stride = 2 if downsamples and not pool else 1
            kernel = 1 if stages.downsample == "conv1x1" else 3
            self._add(f"layer{i}", ConvBlock(channels, width, spec, dtype, pool=pool, kernel=kernel, stride=stride))
            channels = width
            for j in range(2, stages.convs + 1):
                last = j == stages.convs and stages.residual_over_last
                self._add(f"layer{i}_conv{j}", ConvBlock(width, width, spec, dtype, activate=not last))
                if last:  # the stage's first unit's output is added back here, then activated
                    self.residual_over[f"layer{i}_conv{j}"] = f"layer{i}"
            for j in range(blocks):
                self._add(f"res{i}" if j == 0 else f"res{i}_{j + 1}", Residual(width, spec, dtype))
        self.avg_and_max = spec.head.pool == "avg+max"
        features = 2 * channels if self.avg_and_max else channels
        # PyTorch's default init is model.py's: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight and the bias.
        self.classifier = nn.Linear(features, num_classes, bias=spec.head.bias)
        if spec.head.init == "unit-std":
            with torch.no_grad():
                self.classifier.weight /= self.classifier.weight.std(correction=0)
        self.logit_scale = spec.head.logit_scale
        self.act = activation(spec)
        self.dtype = dtype

    def _add(self, name: str, module: nn.Module) -> None:
        self.add_module(name, module)
        self.body.append(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.stem.kind == "whitening-bias":
            x = F.conv2d(x, self.whitening.to(x.dtype), self.whitening_bias.to(x.dtype))
        elif self.whitening is not None:
            x = F.conv2d(x, self.whitening, padding=1)
        x = self.prep(x)
        outputs = {}
        for name in self.body:
            x = getattr(self, name)(x)
            if name in self.residual_over:
                x = self.act(x + outputs[self.residual_over[name]]).to(self.dtype)
            outputs[name] = x
        features = x.amax(dim=(2, 3))
        if self.avg_and_max:
            # The average first, then the max, as model.Network concatenates them; the mean in float32.
            features = torch.cat([x.float().mean(dim=(2, 3)).to(features.dtype), features], dim=1)
        return self.classifier(features).float() * self.logit_scale


def patch_whitening_filters(images: np.ndarray, eps: float, chunk: int = 500) -> np.ndarray:
    """model.patch_whitening_filters in numpy (float64), as (27, 3, 3, 3) OIHW conv weights.

    `images` are normalised NHWC. The covariance is X^T X / (n - 1) of the raw patches, not
    re-centred, as in JAX (and Page's code): the images are already normalised to zero mean
    per channel. It is accumulated over chunks of images, so 10,000 images never hold all 9
    million patches at once. Each filter may come out negated relative to JAX's (eigenvectors
    have no sign); the learnable 1x1 conv after it does not care.
    """
    outer, count = np.zeros((27, 27)), 0
    for start in range(0, len(images), chunk):
        patches = _patches(images[start:start + chunk].astype(np.float64))
        outer += patches.T @ patches
        count += len(patches)
    covariance = outer / (count - 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]  # largest first
    bank = eigenvectors.T / np.sqrt(eigenvalues + eps)[:, None]  # (27 out, 27 patch in (kh, kw, c) order)
    return bank.reshape(27, 3, 3, 3).transpose(0, 3, 1, 2).astype(np.float32)


def whitening_filters(dataset: Dataset, recipe: Recipe) -> np.ndarray | None:
    """The recipe's frozen whitening filters from the first training images, normalised as on the device."""
    spec = recipe.network
    if spec.stem.kind not in ("whitening", "whitening-bias"):
        return None
    sample = dataset.train_images[:spec.stem.whitening_images].astype(np.float32) / 255.0
    if spec.stem.kind == "whitening-bias":
        images = torch.from_numpy((sample - dataset.mean) / dataset.std).permute(0, 3, 1, 2)
        return airbench_whitening(images, spec).numpy()
    return patch_whitening_filters((sample - dataset.mean) / dataset.std, spec.stem.whitening_eps)


def airbench_whitening(images: torch.Tensor, spec: NetworkSpec) -> torch.Tensor:
    """model.whitening_filters for airbench's stem, on the images' device: normalised NCHW images ->
    (2 k k 3, 3, k, k) OIHW filters, the eigen-filters of the (not re-centred) k x k patch
    covariance and their negations. Each pair may come out swapped relative to JAX's (eigenvectors
    have no sign); the bias after them starts at zero or at i.i.d. draws, so that does not matter."""
    k = spec.stem.whitening_kernel
    patches = F.unfold(images.float(), k).transpose(1, 2).reshape(-1, 3 * k * k)  # (c, kh, kw) order
    covariance = patches.T @ patches / (len(patches) - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    bank = eigenvectors.T.flip(0) / torch.sqrt(eigenvalues.flip(0) + spec.stem.whitening_eps)[:, None]  # largest first
    filters = bank.reshape(-1, 3, k, k)
    return torch.cat([filters, -filters])


def _patches(images: np.ndarray) -> np.ndarray:
    """Every valid 3x3 patch, flattened in (kh, kw, c) order like model.extract_patches."""
    _, h, w, c = images.shape
    rows = [images[:, dy:h - 2 + dy, dx:w - 2 + dx, :] for dy in range(3) for dx in range(3)]
    return np.stack(rows, axis=3).reshape(-1, 9 * c)


# ------------------------------------------------------------------------------- the data

@dataclasses.dataclass(frozen=True)
class DeviceData:
    """The whole dataset on the device, normalised once, NCHW in the chosen memory format."""

    train_padded: torch.Tensor  # (N, 3, 32 + 2p, 32 + 2p), reflect-padded for random crops
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    @property
    def num_train(self) -> int:
        return self.train_padded.shape[0]


def put_on_device(dataset: Dataset, recipe: Recipe, dtype: torch.dtype, device: torch.device,
                  memory_format: torch.memory_format) -> DeviceData:
    """Upload uint8 images once, then normalise (as train.put_on_device does) and pad them there."""
    mean = torch.as_tensor(dataset.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.as_tensor(dataset.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def normalise(images: np.ndarray, padding: int = 0) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)
        x = (x.float() / 255.0 - mean) / std
        if padding:
            x = F.pad(x, (padding,) * 4, mode="reflect")
        return x.to(dtype).contiguous(memory_format=memory_format)

    def labels(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values), dtype=torch.int64, device=device)

    return DeviceData(train_padded=normalise(dataset.train_images, recipe.data.crop_padding),
                      train_labels=labels(dataset.train_labels),
                      test_images=normalise(dataset.test_images), test_labels=labels(dataset.test_labels))


def augment(padded: torch.Tensor, idx: torch.Tensor, aug: Data, generator: torch.Generator,
            memory_format: torch.memory_format, flip_coins: torch.Tensor | None = None,
            epoch: int = 0) -> torch.Tensor:
    """A random crop of each indexed image, then a random flip, then cutout: Myrtle's order (`recipe.data`);
    then the colour jitter, when the recipe has it.

    With alternating flip (augment.alternating_flip) image i is mirrored when flip_coins[i],
    its one coin for the run, differs from the parity of the (0-based) epoch.
    """
    batch, device = len(idx), padded.device

    def randint(high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=generator, device=device)

    offsets = torch.arange(IMAGE_SIZE, device=device)
    window = padded.shape[-1] - IMAGE_SIZE + 1
    rows = (randint(window, (batch, 1)) + offsets)[:, :, None]
    cols = (randint(window, (batch, 1)) + offsets)[:, None, :]
    # Advanced indices split by the channel slice put the indexed dims first: (B, 32, 32, C).
    x = padded[idx[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    if aug.alternating_flip:
        flip = (flip_coins[idx] ^ bool(epoch % 2)).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(3), x)
    elif aug.flip:
        flip = torch.rand((batch, 1, 1, 1), generator=generator, device=device) < 0.5
        x = torch.where(flip, x.flip(3), x)
    if aug.cutout:
        size, span = aug.cutout, IMAGE_SIZE - aug.cutout + 1
        ys, xs = randint(span, (batch, 1, 1, 1)), randint(span, (batch, 1, 1, 1))
        r, c = offsets.view(1, 1, -1, 1), offsets.view(1, 1, 1, -1)
        x = x.masked_fill((r >= ys) & (r < ys + size) & (c >= xs) & (c < xs + size), 0)
    if aug.brightness_jitter or aug.contrast_jitter:
        x = torch_pieces.colour_jitter(x, aug.brightness_jitter, aug.contrast_jitter, generator)
    return x.contiguous(memory_format=memory_format)


# ------------------------------------------------------------------------- the optimiser

def lr_schedule(recipe: Recipe, steps_per_epoch: int) -> Callable[[int], float]:
    """Myrtle-unit learning rate at a step (optim.lr_schedule): piecewise linear in epochs."""
    epochs = [e for e, _ in recipe.optimiser.lr_knots]
    lrs = [lr for _, lr in recipe.optimiser.lr_knots]
    return lambda step: float(np.interp(step / steps_per_epoch, epochs, lrs))


class PageSGD(torch.optim.Optimizer):
    """David Page's SGD (optim.nesterov_sgd's "page" form), whose momentum buffer holds lr-scaled steps.

    d = -lr (g + wd w); v = m v + d; then w += d + m v with Nesterov momentum, w += v without.
    The buffer starts at zero, as optax.trace's does. Each group's `lr` is set before each
    step; for this form the trainer reads the schedule at step + 1, as Page's code does.
    """

    def __init__(self, params, lr: float, momentum: float, nesterov: bool, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            buffers = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buffers.append(state["momentum_buffer"])
            steps = torch._foreach_add([p.grad for p in params], params, alpha=group["weight_decay"])
            torch._foreach_mul_(steps, -group["lr"])  # d = -lr (g + wd w)
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, steps)  # v = m v + d
            if group["nesterov"]:
                torch._foreach_add_(steps, buffers, alpha=group["momentum"])  # d + m v
                torch._foreach_add_(params, steps)
            else:
                torch._foreach_add_(params, buffers)
        return None


def newton_schulz(matrix: torch.Tensor, steps: int, dtype: torch.dtype,
                  coefficients: tuple[float, float, float] = torch_pieces.NS_COEFFICIENTS) -> torch.Tensor:
    """muon.newton_schulz: the quintic iteration towards U V^T, in `dtype`, on the wide side."""
    a, b, c = coefficients
    x = matrix.to(dtype)
    x = x / (x.norm() + 1e-7)
    tall = matrix.shape[0] > matrix.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(matrix.dtype)


class Muon(torch.optim.Optimizer):
    """muon.muon for OIHW conv filters: buf = m buf + g; d = g + m buf (Nesterov); each filter bank
    renormalised to norm sqrt(C_out), then w -= lr NS(d as C_out x (C_in k k))."""

    def __init__(self, params, lr: float, momentum: float, nesterov: bool, ns_steps: int, ns_dtype: torch.dtype,
                 coefficients: tuple[float, float, float] = torch_pieces.NS_COEFFICIENTS):
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov, "ns_steps": ns_steps,
                                  "ns_dtype": ns_dtype, "coefficients": coefficients})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            m = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"].mul_(m).add_(p.grad)
                direction = p.grad.add(buf, alpha=m) if group["nesterov"] else buf
                p.mul_(len(p) ** 0.5 / p.norm())
                update = newton_schulz(direction.reshape(len(p), -1), group["ns_steps"], group["ns_dtype"],
                                       group["coefficients"])
                p.add_(update.view_as(p), alpha=-group["lr"])
        return None


def is_bn_bias(name: str) -> bool:
    """optim.param_groups: convolutions have no biases, so every bias outside the `classifier` head is a BN bias."""
    return name.endswith(".bias") and not name.startswith("classifier.")


def make_optimizer(net: nn.Module, recipe: Recipe, steps_per_epoch: int = 1) -> torch.optim.Optimizer:
    """SGD, Nesterov, coupled weight decay on a summed loss (optim.make_optimizer), in the recipe's update form.

    "torch": torch.optim.SGD; "page": PageSGD. Groups: weights (kernels, BN scales, the head's
    bias), BN biases (lr x bn_bias_lr_mult, wd x bn_bias_wd_mult) and airbench's whitening bias
    (its own multipliers and schedule); the conv filters are left to Muon when the recipe uses it
    (make_muon). Each group keeps its lr multiplier and schedule; the trainer sets
    lr = schedule(step) * lr_mult / batch_size before each step.
    """
    o = recipe.optimiser
    wd = o.weight_decay * recipe.data.batch_size
    schedule = lr_schedule(recipe, steps_per_epoch)
    named = [(name, p) for name, p in net.named_parameters() if not (o.muon and p.ndim == 4)]
    groups = [{"params": [p for name, p in named if not is_bn_bias(name) and name != "whitening_bias"],
               "weight_decay": wd, "lr_mult": 1.0, "schedule": schedule},
              {"params": [p for name, p in named if is_bn_bias(name)], "weight_decay": wd * o.bn_bias_wd_mult,
               "lr_mult": o.bn_bias_lr_mult, "schedule": schedule}]
    if recipe.network.stem.kind == "whitening-bias":
        bias = o.whitening_bias or UNTRAINED_WHITENING_BIAS
        groups.append({"params": [net.whitening_bias], "weight_decay": wd * bias.wd_mult, "lr_mult": bias.lr_mult,
                       "schedule": whitening_bias_schedule(bias, schedule, steps_per_epoch)})
    if o.update == "torch":
        return torch.optim.SGD(groups, lr=0.0, momentum=o.momentum, nesterov=o.nesterov)
    if o.update == "page":
        return PageSGD(groups, lr=0.0, momentum=o.momentum, nesterov=o.nesterov)
    raise ValueError(f"unknown update form {o.update!r}; use 'torch' or 'page'")


def whitening_bias_schedule(bias: WhiteningBias, schedule: Callable[[int], float],
                            steps_per_epoch: int) -> Callable[[int], float]:
    """optim.whitening_bias_schedule: the run's lr until `bias.epochs` ("cut"), or its initial lr
    decaying linearly to 0 by then ("linear"); 0 after."""
    steps = math.ceil(bias.epochs * steps_per_epoch)
    if bias.decay == "cut":
        return lambda step: schedule(step) if step < steps else 0.0
    return lambda step: schedule(0) * min(max(1 - step / steps, 0.0), 1.0)


def make_muon(net: nn.Module, recipe: Recipe, steps_per_epoch: int = 1) -> torch.optim.Optimizer | None:
    """Muon on the 4-D conv filters when the recipe asks for it, its lr following the schedule's shape:
    the record's stacked form (torch_pieces.StackedMuon) when `muon.stacked`."""
    o = recipe.optimiser
    if not (spec := o.muon):
        return None
    schedule, peak = lr_schedule(recipe, steps_per_epoch), max(lr for _, lr in o.lr_knots)
    filters = [p for p in net.parameters() if p.ndim == 4]
    group = {"params": filters, "lr_mult": spec.lr / peak * recipe.data.batch_size, "schedule": schedule}
    if spec.stacked:
        return torch_pieces.StackedMuon([group], lr=0.0, momentum=spec.momentum, nesterov=spec.nesterov,
                                        weight_decay=spec.weight_decay, ns_steps=spec.ns_steps,
                                        ns_dtype=DTYPES[spec.ns_dtype], coefficients=spec.coefficients,
                                        renormalise_every=spec.renormalise_every,
                                        buffer_dtype=DTYPES[spec.buffer_dtype])
    return Muon([group], lr=0.0, momentum=spec.momentum, nesterov=spec.nesterov, ns_steps=spec.ns_steps,
                ns_dtype=DTYPES[spec.ns_dtype], coefficients=spec.coefficients)


def averaged_named(net: nn.Module) -> dict[str, torch.Tensor]:
    """averaged_tensors by name: what lookahead's slow copy covers."""
    return {**dict(net.named_parameters()), **{n: b for n, b in net.named_buffers() if n != "whitening"}}


@torch.no_grad()
def lookahead_update(slow: dict[str, torch.Tensor], live: dict[str, torch.Tensor], done: int, total: int,
                     decay: float, every: int) -> None:
    """optim.lookahead_update in place: after step `done`, every `every` steps slow <- alpha slow +
    (1 - alpha) live and live <- slow; after the last step live <- slow."""
    due = done % every == 0
    if due:
        alpha = decay ** every * (done / total) ** 3
        for name, s in slow.items():
            s.lerp_(live[name], 1 - alpha)
    if due or done >= total:
        for name, s in slow.items():
            live[name].copy_(s)


def averaged_tensors(net: nn.Module) -> list[torch.Tensor]:
    """What the EMA covers: every parameter and the BN running statistics (not the whitening)."""
    return list(net.parameters()) + [b for name, b in net.named_buffers() if name != "whitening"]


@torch.no_grad()
def ema_update(ema: Sequence[torch.Tensor], live: Sequence[torch.Tensor], step: int, momentum: float,
               every: int) -> None:
    """optim.ema_update: every `every` steps, the bias-corrected move towards the live weights."""
    if step % every:
        return
    rho = momentum ** every
    mix = (1 - rho) / (1 - rho ** (step // every + 1))
    for e, p in zip(ema, live):
        e.add_(p - e, alpha=mix)


# ---------------------------------------------------------------------------- the trainer

class Trainer:
    """A network, its EMA copy, the optimiser and loss scaler, reset from a seed for each run.

    The network is built once so that torch.compile compiles it once; `reset` loads fresh
    initial weights into it in place.
    """

    def __init__(self, config: RunConfig, device: torch.device, whitening: np.ndarray | None,
                 steps_per_epoch: int, compile_model: bool = False,
                 memory_format: torch.memory_format = torch.channels_last):
        recipe = self.recipe = config.recipe
        self.config, self.device, self.memory_format = config, device, memory_format
        self.dtype = DTYPES[config.precision]
        self.widths = settings.scaled_widths(recipe.network, config.width_mult)
        self.whitening = whitening
        self.steps_per_epoch = steps_per_epoch
        self.schedule = lr_schedule(recipe, steps_per_epoch)
        # Page's update form reads the schedule one step ahead (optim.nesterov_sgd).
        self.schedule_offset = 1 if recipe.optimiser.update == "page" else 0
        # The EMA horizon stretches with the run's length, as in train.steps.train_step.
        self.run_steps = recipe.run_steps(steps_per_epoch)
        ema = recipe.optimiser.ema
        self.ema_momentum = ema.momentum_per_step(self.run_steps) if ema else None
        self.model = self._fresh_model(seed=0)
        self.ema_model = copy.deepcopy(self.model).eval().requires_grad_(False) if ema else None
        self.net = torch.compile(self.model) if compile_model else self.model
        self.eval_net = torch.compile(self.ema_model) if compile_model and self.ema_model else self.ema_model
        self.reset(seed=0)

    def _fresh_model(self, seed: int) -> Network:
        torch.manual_seed(seed)  # PyTorch's default init, drawn from this seed
        net = Network(self.recipe.network, self.widths, self.dtype, self.whitening)
        return net.to(self.device, memory_format=self.memory_format)

    def reset(self, seed: int) -> None:
        """Fresh initial weights, optimiser, loss scale, step count, totals and random stream."""
        self.model.load_state_dict(self._fresh_model(seed).state_dict())
        self.model.train()
        if self.ema_model is not None:
            self.ema_model.load_state_dict(self.model.state_dict())
        self.optimizer = make_optimizer(self.model, self.recipe, self.steps_per_epoch)
        self.muon = make_muon(self.model, self.recipe, self.steps_per_epoch)
        # Lookahead's slow copy starts as the initial weights (train.steps.init).
        self.slow = ({name: t.detach().clone() for name, t in averaged_named(self.model).items()}
                     if self.recipe.optimiser.lookahead else None)
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=2.0 ** 15, growth_interval=1000,
                                           enabled=self.config.precision == "fp16")
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.flip_coins = None  # drawn by the first epoch of a recipe with alternating flip
        self.step = 0
        self.totals = torch.zeros(2, device=self.device)  # [loss sum, correct] since the reset
        self.examples = 0

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """One SGD step on a batch that is already augmented."""
        o = self.recipe.optimiser
        optimizers = [self.optimizer] + ([self.muon] if self.muon is not None else [])
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                # Muon's lr_mult turns the schedule into its own lr (make_muon).
                lr = group["schedule"](self.step + self.schedule_offset)
                group["lr"] = lr * group["lr_mult"] / self.recipe.data.batch_size
        with self.autocast():
            logits = self.net(images)
        loss = F.cross_entropy(logits, labels, reduction="sum", label_smoothing=o.label_smoothing)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        for optimizer in optimizers:
            self.scaler.step(optimizer)  # skipped when fp16 gradients overflow
        self.scaler.update()
        if self.ema_model is not None:
            ema_update(averaged_tensors(self.ema_model), averaged_tensors(self.model), self.step,
                       self.ema_momentum, o.ema.every)
        if self.slow is not None:
            lookahead_update(self.slow, averaged_named(self.model), self.step + 1, self.run_steps,
                             o.lookahead.decay, o.lookahead.every)
        self.totals += torch.stack([loss.detach(), (logits.argmax(-1) == labels).sum().float()])
        self.examples += len(labels)
        self.step += 1

    def train_epoch(self, data: DeviceData, steps: int | None = None, epoch: int = 1) -> None:
        """A fresh permutation cut into full batches (the last partial one dropped), augmented per batch;
        `steps` of them (fewer in the last epoch of a fractional run). `epoch` counts from 1."""
        order = torch.randperm(data.num_train, generator=self.generator, device=self.device)
        batches = order[:self.steps_per_epoch * self.recipe.data.batch_size].view(self.steps_per_epoch, -1)
        if self.recipe.data.alternating_flip and self.flip_coins is None:
            self.flip_coins = torch.rand(data.num_train, generator=self.generator, device=self.device) < 0.5
        for idx in batches[:steps]:
            interrupt.check()  # Ctrl-C stops after the step in flight (a flag read on the host: no sync)
            images = augment(data.train_padded, idx, self.recipe.data, self.generator, self.memory_format,
                             self.flip_coins, epoch - 1)
            self.train_step(images, data.train_labels[idx])

    @torch.no_grad()
    def evaluate(self, data: DeviceData) -> tuple[float, float, float, float]:
        """[correct, correct with flip TTA, loss sum, examples] with the EMA (or live) weights."""
        net = self.eval_net if self.ema_model is not None else self.net
        self.model.eval()  # the EMA copy is always in eval mode
        sums = torch.zeros(3, device=self.device)
        if self.recipe.evaluation.tta_selective_fraction:
            sums += self.selective_sums(net, data)
        else:
            for start in range(0, len(data.test_labels), EVAL_BATCH):
                x, y = data.test_images[start:start + EVAL_BATCH], data.test_labels[start:start + EVAL_BATCH]
                with self.autocast():
                    logits, tta = self.logits_with_tta(net, x)
                loss = F.cross_entropy(logits, y, reduction="sum",
                                       label_smoothing=self.recipe.optimiser.label_smoothing)
                sums += torch.stack([(logits.argmax(-1) == y).sum().float(), (tta.argmax(-1) == y).sum().float(),
                                     loss])
        self.model.train()
        correct, correct_tta, loss_sum = sums.tolist()
        return correct, correct_tta, loss_sum, float(len(data.test_labels))

    def selective_sums(self, net: nn.Module, data: DeviceData) -> torch.Tensor:
        """train's selective TTA: plain logits for every test image, then the recipe's TTA for the
        int(fraction x n) least confident, a batch at a time; [correct, correct with TTA, loss sum]."""
        evaluation, x, y = self.recipe.evaluation, data.test_images, data.test_labels
        with self.autocast():
            logits = torch.cat([net(x[start:start + EVAL_BATCH]) for start in range(0, len(y), EVAL_BATCH)])
            chosen = torch_pieces.least_confident(logits, int(evaluation.tta_selective_fraction * len(y)))
            selective = logits.clone()
            for start in range(0, len(chosen), EVAL_BATCH):
                rows = chosen[start:start + EVAL_BATCH]
                selective[rows] = self.logits_with_tta(net, x[rows])[1].to(selective.dtype)
        loss = F.cross_entropy(logits, y, reduction="sum", label_smoothing=self.recipe.optimiser.label_smoothing)
        return torch.stack([(logits.argmax(-1) == y).sum().float(), (selective.argmax(-1) == y).sum().float(), loss])

    def logits_with_tta(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """train.logits_with_tta: plain logits and the flip mean, or airbench's 6 views with tta_shift
        (weighted alike with tta_equal_weights, tta.equal_weight_views)."""
        logits = net(x)
        if self.recipe.evaluation.tta_equal_weights:
            return logits, torch_pieces.equal_weight_views(net, x, self.recipe.evaluation.tta_shift)
        mirrored = (logits + net(x.flip(3))) / 2
        shift = self.recipe.evaluation.tta_shift
        if not shift:
            return logits, mirrored
        padded = F.pad(x, (shift,) * 4, mode="reflect")
        size = x.shape[-1]
        shifted = [padded[..., :size, :size], padded[..., 2 * shift:2 * shift + size, 2 * shift:2 * shift + size]]
        pairs = [(net(v) + net(v.flip(3))) / 2 for v in shifted]
        return logits, mirrored / 2 + (pairs[0] + pairs[1]) / 4

    @torch.no_grad()
    def recompute_whitening(self, data: DeviceData) -> None:
        """airbench's stem: its filters again from the device's first training images (airbench_whitening),
        so that a run under airbench's rule has them on its clock."""
        spec, pad = self.recipe.network, self.recipe.data.crop_padding
        images = data.train_padded[:spec.stem.whitening_images, :, pad:pad + IMAGE_SIZE, pad:pad + IMAGE_SIZE]
        self.model.whitening.copy_(airbench_whitening(images, spec))

    def synchronize(self) -> None:
        """Wait for the device, so the clock reads the end of the work and not of its queueing."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def warm_up(trainer: Trainer, data: DeviceData, seed: int) -> float:
    """A throw-away step and evaluation (compiling under --compile); returns the seconds, kept off the clock."""
    start = time.perf_counter()
    trainer.reset(seed)
    trainer.train_epoch(data, steps=1)
    trainer.evaluate(data)
    trainer.synchronize()
    return time.perf_counter() - start


class Engine:
    """loop.Engine over a Trainer that is already reset for its run."""

    def __init__(self, trainer: Trainer, data: DeviceData):
        self.trainer, self.data = trainer, data
        self.steps_per_epoch = trainer.steps_per_epoch

    def init(self) -> None:
        """Under airbench's rule, the whitening filters again, so that the clock covers them."""
        recipe = self.trainer.recipe
        if recipe.timing.rule == "airbench" and recipe.network.stem.kind == "whitening-bias":
            self.trainer.recompute_whitening(self.data)
            self.trainer.synchronize()

    def train_epoch(self, epoch: int, steps: int) -> None:
        self.trainer.train_epoch(self.data, steps, epoch)
        self.trainer.synchronize()

    def totals(self) -> np.ndarray:
        return np.array([[*self.trainer.totals.tolist(), self.trainer.examples]])

    def evaluate(self) -> np.ndarray:
        return np.array([self.trainer.evaluate(self.data)])

    def learning_rates(self, done: int) -> np.ndarray:
        return np.array([self.trainer.schedule(done)])


def run(trainer: Trainer, data: DeviceData, seed: int, on_epoch: Callable[[dict], None], record: dict) -> dict:
    """One timed run, as train.run (loop.run); the fresh weights of `seed` are made off the clock."""
    trainer.reset(seed)
    trainer.synchronize()
    diverged = loop.run(Engine(trainer, data), trainer.recipe, [seed], [record], lambda member, m: on_epoch(m))
    if diverged:
        raise diverged[0]
    return record


# ------------------------------------------------------------------------ the command line

def environment(device: torch.device, compiled: bool) -> dict:
    """report.files.environment's keys that are not JAX's, for PyTorch."""
    cuda = device.type == "cuda"
    return {"torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None, "compile": compiled, "backend": device.type,
            "device_kind": torch.cuda.get_device_name(device) if cuda else "cpu",
            "device_count": torch.cuda.device_count() if cuda else 1, "threads": torch.get_num_threads(),
            "python": platform.python_version()}


def build_parser() -> argparse.ArgumentParser:
    """The JAX trainer's flags (flags.add_run_arguments, --json, --tensorboard, --plot), plus --device, --compile and
    --memory-format."""
    parser = argparse.ArgumentParser(
        prog="python -m jax_resnet_speed.torch_reference",
        description="Train the same recipe (any preset of the series) in PyTorch, timed like the JAX trainer.",
        formatter_class=flags.HelpFormatter)
    flags.add_run_arguments(parser)
    flags.add_json(parser)
    flags.add_output_arguments(parser)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (cuda, cuda:1, cpu)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (forward and backward); "
                        "compilation happens in the untimed warm-up")
    parser.add_argument("--memory-format", choices=("channels_last", "contiguous"), default="channels_last",
                        help="layout of images and conv weights")
    return parser


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    cli.validate(args, parser)
    cli.refuse_data_filtering(parser, args.preset, "python -m jax_resnet_speed.train")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device!r} is not a torch device")
    if device.type not in ("cuda", "cpu"):
        parser.error(f"--device must be cuda or cpu, got {args.device}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this PyTorch ({torch.__version__}) sees no CUDA GPU")


def train_from_args(args: argparse.Namespace) -> int:
    """Load, warm up once, run --runs times, print the table and write the JSON (as cli.train_from_args)."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # autotune convolutions in the warm-up, as XLA does at compile
    # PyTorch keeps no compiled programs between processes here: every warm-up is a cold one.
    payload: dict = {"config": None, "environment": environment(device, args.compile), "compile_seconds": None,
                     "compilation": {"cache": "no", "torch_compile": args.compile}, "runs": [], "summary": None}
    config = cli.resolve_config(args, "cpu" if device.type == "cpu" else "gpu")
    recipe = config.recipe
    try:
        dataset, payload["config"] = cli.load_run_data(args, config)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return flags.EXIT_DATA_ERROR
    except cli.UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return flags.EXIT_USAGE
    payload["config"].update(framework="torch-compile" if args.compile else "torch", device=str(device),
                             memory_format=args.memory_format)
    env = payload["environment"]
    print(f"{recipe.name}: {recipe.description}")
    print(f"{env['device_kind']} ({env['backend']}), torch {env['torch']}{' compiled' if args.compile else ''}, "
          f"{config.precision}, width x{config.width_mult}, "
          f"{len(dataset.train_images)} train / {len(dataset.test_images)} test images ({dataset.source_kind})")
    print(cli.timing_line(recipe))

    def prepare() -> cli.RunOne:
        memory_format = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
        device_data = put_on_device(dataset, recipe, DTYPES[config.precision], device, memory_format)
        steps_per_epoch = device_data.num_train // recipe.data.batch_size
        trainer = Trainer(config, device, whitening_filters(dataset, recipe), steps_per_epoch,
                          compile_model=args.compile, memory_format=memory_format)
        payload["compile_seconds"] = warm_up(trainer, device_data, args.seed)
        print(f"{'compiled and ' if args.compile else ''}warmed up in {payload['compile_seconds']:.1f} s (not timed)")
        return lambda seed, on_epoch, record: run(trainer, device_data, seed, on_epoch, record)

    return cli.run_all(args, payload, recipe.timing.target, prepare)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_presets:
        cli.list_presets()
        return 0
    validate(args, parser)
    return train_from_args(args)


if __name__ == "__main__":
    interrupt.main(main)
