"""The PyTorch twins of the record's new pieces (hiverge's cifar10_speedrun), for the reference trainer.

Each mirrors a JAX piece and is tested against it (tests/test_torch_pieces.py):

- `batched_newton_schulz`, `orthogonalise_filter_stack`: muon's batched Newton-Schulz over
  zero-padded, stacked filters; `StackedMuon`: a Muon step built on it, with the record's options
  (its coefficients, renormalisation every k steps, decoupled weight decay, a momentum buffer in
  its own dtype);
- `shift_and_scale`, `colour_jitter`: augment's brightness shift and contrast factor per image;
- `equal_weight_views`, `least_confident`, `selective_tta`: tta's 6 views and selective TTA.

Only torch: importing this module starts no JAX, so the reference trainer can use it on a GPU
without JAX grabbing the GPU's memory. Images are NCHW and filters OIHW, PyTorch's layouts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

# muon.NS_COEFFICIENTS and muon.RECORD_NS_COEFFICIENTS (a test keeps them equal).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
RECORD_NS_COEFFICIENTS = (3.4576, -4.7391, 2.0843)


# ------------------------------------------------------------------------ Newton-Schulz and Muon

def batched_newton_schulz(matrices: Sequence[torch.Tensor], steps: int, dtype: torch.dtype,
                          coefficients: tuple[float, float, float] = NS_COEFFICIENTS) -> list[torch.Tensor]:
    """muon.batched_newton_schulz: each matrix's quintic iteration towards U V^T, run as one batched
    iteration over the matrices zero-padded to a common shape (exact, see there), each normalised
    by its own Frobenius norm, on the stack's wide side; returned un-padded in each matrix's dtype."""
    a, b, c = coefficients
    rows = max(m.shape[0] for m in matrices)
    cols = max(m.shape[1] for m in matrices)
    x = torch.stack([F.pad(m.to(dtype), (0, cols - m.shape[1], 0, rows - m.shape[0])) for m in matrices])
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + 1e-7)
    tall = rows > cols
    if tall:
        x = x.transpose(1, 2)
    for _ in range(steps):
        gram = x @ x.transpose(1, 2)
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.transpose(1, 2)
    return [x[i, :m.shape[0], :m.shape[1]].to(m.dtype) for i, m in enumerate(matrices)]


def orthogonalise_filter_stack(kernels: Sequence[torch.Tensor], steps: int, dtype: torch.dtype,
                               coefficients: tuple[float, float, float] = NS_COEFFICIENTS) -> list[torch.Tensor]:
    """batched_newton_schulz of OIHW filter banks, each seen as C_out x (C_in k k)."""
    matrices = [k.reshape(len(k), -1) for k in kernels]
    return [m.view_as(k) for m, k in zip(batched_newton_schulz(matrices, steps, dtype, coefficients), kernels)]


class StackedMuon(torch.optim.Optimizer):
    """Muon on OIHW conv filters with one batched Newton-Schulz over all of them, as the record runs it.

    At step t (from 1): buf <- m buf + g (buf in `buffer_dtype`, the params' when None);
    d = g + m buf (Nesterov) or buf; then every filter bank
        w <- w sqrt(C_out) / (|w| + 1e-7)   only when t is a multiple of `renormalise_every`,
        w <- w - lr NS(d),
        w <- w (1 - lr weight_decay)        (decoupled weight decay, scaled by the scheduled lr).
    With renormalise_every 1, weight decay 0 and NS_COEFFICIENTS it is torch_reference.Muon (and
    muon.muon), up to rounding. The record: RECORD_NS_COEFFICIENTS, every 8, weight decay 1.6002e-3,
    an fp16 buffer. Each group's `lr` is set before each step, as for the trainer's other optimisers.
    """

    def __init__(self, params, lr: float, momentum: float, nesterov: bool = True, weight_decay: float = 0.0,
                 ns_steps: int = 3, ns_dtype: torch.dtype = torch.bfloat16,
                 coefficients: tuple[float, float, float] = NS_COEFFICIENTS, renormalise_every: int = 1,
                 buffer_dtype: torch.dtype | None = None):
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov,
                                  "weight_decay": weight_decay})
        # One stack for every group: its iteration's settings belong to the optimiser.
        self.ns_steps, self.ns_dtype, self.coefficients = ns_steps, ns_dtype, coefficients
        self.renormalise_every, self.buffer_dtype = renormalise_every, buffer_dtype
        self.steps_done = 0

    @torch.no_grad()
    def step(self, closure=None):
        entries = [(group, p) for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not entries:
            return None
        self.steps_done += 1
        directions = []
        for group, p in entries:
            state, m = self.state[p], group["momentum"]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, dtype=self.buffer_dtype or p.dtype)
            buf = state["momentum_buffer"]
            buf.mul_(m).add_(p.grad.to(buf.dtype))
            directions.append(p.grad.add(buf, alpha=m) if group["nesterov"] else buf)
        updates = orthogonalise_filter_stack(directions, self.ns_steps, self.ns_dtype, self.coefficients)
        renormalise = self.steps_done % self.renormalise_every == 0
        for (group, p), update in zip(entries, updates):
            if renormalise:
                p.mul_(len(p) ** 0.5 / (p.norm() + 1e-7))
            p.add_(update.to(p.dtype), alpha=-group["lr"])
            if group["weight_decay"]:
                p.mul_(1 - group["lr"] * group["weight_decay"])
        return None


# ---------------------------------------------------------------------------------- augmentation

def shift_and_scale(images: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """augment.shift_and_scale on NCHW images: (images + shift) x scale, one shift and one scale per image."""
    return (images + shift.view(-1, 1, 1, 1)) * scale.view(-1, 1, 1, 1)


def colour_jitter(images: torch.Tensor, brightness: float, contrast: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """augment.colour_jitter: per image, add a shift uniform in [-brightness, brightness], then
    multiply by a factor uniform in [1 - contrast, 1 + contrast] (drawn in float32, then cast)."""
    batch, device = len(images), images.device
    shift = (2 * torch.rand(batch, generator=generator, device=device) - 1) * brightness
    scale = 1 + (2 * torch.rand(batch, generator=generator, device=device) - 1) * contrast
    return shift_and_scale(images, shift.to(images.dtype), scale.to(images.dtype))


# --------------------------------------------------------------------------- test-time augmentation

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def equal_weight_views(apply: LogitsFn, images: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """tta.equal_weight_views: the mean of the logits of the image and its crops `shift` pixels
    up-left and down-right of its reflect-padding, each as is and mirrored, weighted alike."""
    size = images.shape[-1]
    padded = F.pad(images, (shift,) * 4, mode="reflect")
    views = [images, padded[..., :size, :size], padded[..., 2 * shift:2 * shift + size, 2 * shift:2 * shift + size]]
    views += [v.flip(3) for v in views]
    return torch.stack([apply(v) for v in views]).mean(0)


def least_confident(logits: torch.Tensor, count: int) -> torch.Tensor:
    """tta.least_confident: indices of the `count` rows whose largest softmax probability is smallest."""
    confidence = logits.float().softmax(-1).amax(-1)
    return torch.topk(-confidence, count).indices


def selective_tta(apply: LogitsFn, tta: LogitsFn, images: torch.Tensor,
                  fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """tta.selective_tta: (plain logits, selective-TTA logits), where `tta`'s logits replace the plain
    ones for the int(fraction x n) least confident images, as the record does."""
    plain = apply(images)
    count = int(fraction * len(images))
    if count == 0:
        return plain, plain
    chosen = least_confident(plain, count)
    selective = plain.clone()
    selective[chosen] = tta(images[chosen]).to(plain.dtype)
    return plain, selective
