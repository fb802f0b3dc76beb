"""PyTorch twins of the benchmark models, weights copied from Flax, and their Opacus steps.

Only ``bench/dp_step.py`` imports this module, and only when ``torch`` and ``opacus`` import
(the ``bench`` extra). Each twin computes the same function as its Flax model: same layer
order, LayerNorm epsilon 1e-6, tanh GELU (``flax.linen.gelu``'s default), masked mean/max
pooling, padding mask with the dtype's minimum, "SAME" convolution padding. Module names
mirror the Flax parameter paths so :func:`load_flax` copies weights by name.
"""

import copy
import math

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.grad_sample import register_grad_sampler
from torch import nn


class PositionAdd(nn.Module):
  """``x + pos[:T]``: a raw positional table added with broadcasting (a parameter, no layer)."""

  def __init__(self, max_len: int, dim: int):
    super().__init__()
    self.pos = nn.Parameter(torch.zeros(max_len, dim))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x + self.pos[None, : x.shape[1]]


@register_grad_sampler(PositionAdd)
def _position_grad_sample(layer, activations, backprops):
  del activations
  g = torch.zeros((backprops.shape[0],) + layer.pos.shape, dtype=backprops.dtype)
  g[:, : backprops.shape[1]] = backprops
  return {layer.pos: g}


def _masked_mean(x, mask):
  m = mask[..., None].to(x.dtype)
  return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def _masked_max(x, mask):
  out = torch.where(mask[..., None], x, torch.finfo(x.dtype).min).amax(1)
  return torch.where(mask.any(1, keepdim=True), out, torch.zeros_like(out))


class Attention(nn.Module):
  def __init__(self, dim: int, heads: int, causal: bool):
    super().__init__()
    self.heads, self.causal = heads, causal
    self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

  def forward(self, x, mask):
    b, t, d = x.shape
    h = self.heads

    def split(y):
      return y.reshape(b, t, h, d // h).transpose(1, 2)

    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)
    allowed = mask[:, None, None, :]
    if self.causal:
      allowed = allowed & torch.ones(t, t, dtype=torch.bool).tril()[None, None]
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
    return self.out(out)


class Block(nn.Module):
  def __init__(self, dim: int, heads: int, mlp: int, causal: bool):
    super().__init__()
    self.ln_attn = nn.LayerNorm(dim, eps=1e-6)
    self.attn = Attention(dim, heads, causal)
    self.ln_mlp = nn.LayerNorm(dim, eps=1e-6)
    self.mlp_in = nn.Linear(dim, mlp)
    self.mlp_out = nn.Linear(mlp, dim)

  def forward(self, x, mask):
    x = x + self.attn(self.ln_attn(x), mask)
    return x + self.mlp_out(nn.functional.gelu(self.mlp_in(self.ln_mlp(x)), approximate="tanh"))


class Transformer(nn.Module):
  """trustml's TransformerEncoder (mean pooling) or causal LM (tied ``embed.attend`` head)."""

  def __init__(self, vocab, classes, max_len, dim, layers, heads, mlp, *, raw_pos=False, lm=False):
    super().__init__()
    self.lm, self.raw_pos = lm, raw_pos
    self.embed = nn.Embedding(vocab, dim)
    self.pos_embed = PositionAdd(max_len, dim) if raw_pos else nn.Embedding(max_len, dim)
    self.blocks = nn.ModuleList(Block(dim, heads, mlp, lm) for _ in range(layers))
    self.final_ln = nn.LayerNorm(dim, eps=1e-6)
    if not lm:
      self.head = nn.Linear(dim, classes)

  def forward(self, tokens, mask):
    x = self.embed(tokens)
    if self.raw_pos:
      x = self.pos_embed(x)
    else:
      x = x + self.pos_embed(torch.arange(tokens.shape[1]).expand_as(tokens).contiguous())
    for block in self.blocks:
      x = block(x, mask)
    x = self.final_ln(x)
    if self.lm:
      return x @ self.embed.weight.T
    return self.head(_masked_mean(x, mask))


class Bag(nn.Module):
  def __init__(self, vocab, classes, dim, hidden):
    super().__init__()
    self.embed = nn.Embedding(vocab, dim)
    self.hidden = nn.Linear(dim, hidden)
    self.head = nn.Linear(hidden, classes)

  def forward(self, tokens, mask):
    return self.head(torch.relu(self.hidden(_masked_mean(self.embed(tokens), mask))))


class CNN(nn.Module):
  def __init__(self, vocab, classes, dim, filters, kernel_sizes):
    super().__init__()
    self.embed = nn.Embedding(vocab, dim)
    self.kernel_sizes = tuple(kernel_sizes)
    for k in self.kernel_sizes:
      setattr(self, f"conv{k}", nn.Conv1d(dim, filters, k))
    self.head = nn.Linear(filters * len(self.kernel_sizes), classes)

  def forward(self, tokens, mask):
    x = (self.embed(tokens) * mask[..., None].to(torch.float32)).transpose(1, 2)
    feats = []
    for k in self.kernel_sizes:
      y = torch.relu(getattr(self, f"conv{k}")(nn.functional.pad(x, ((k - 1) // 2, k // 2))))
      feats.append(_masked_max(y.transpose(1, 2), mask))
    return self.head(torch.cat(feats, -1))


def _torch_name(path: tuple) -> str:
  head, leaf = path[:-1], path[-1]
  names = []
  for p in head:
    if p.startswith("block") and p[5:].isdigit():
      names += ["blocks", p[5:]]
    else:
      names.append(p)
  leaf = {"kernel": "weight", "embedding": "weight", "scale": "weight"}.get(leaf, leaf)
  return ".".join(names + [leaf])


def load_flax(module: nn.Module, flat_params: dict) -> None:
  """Copies Flax parameters (``flatten_dict`` form) into the twin, transposing kernels."""
  state = module.state_dict()
  for path, value in flat_params.items():
    name = _torch_name(path)
    if path[-1] == "pos" or path == ("pos_embed", "pos"):
      name = "pos_embed.pos"
    v = torch.from_numpy(np.asarray(value, np.float32).copy())
    if path[-1] == "kernel":
      v = v.T if v.ndim == 2 else v.permute(2, 1, 0)  # Dense [in, out]; Conv [k, in, out].
    if state[name].shape != v.shape:
      raise ValueError(f"{name}: torch {tuple(state[name].shape)} vs flax {tuple(v.shape)}")
    state[name] = v
  module.load_state_dict(state)


def loss_of(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, label, lm: bool):
  """Mean cross-entropy (per-sequence mean next-token NLL for the LM), like trustml's losses."""
  if not lm:
    return nn.functional.cross_entropy(logits, label)
  nll = nn.functional.cross_entropy(
    logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
  ).reshape(tokens.shape[0], -1)
  tm = mask[:, 1:].to(nll.dtype)
  return ((nll * tm).sum(1) / tm.sum(1).clamp_min(1.0)).mean()


class LmLoss(nn.Module):
  """Opacus criterion form of the LM loss: ``criterion(logits, packed_targets)``."""

  reduction = "mean"

  def forward(self, logits, target):
    tokens, mask = target[..., 0], target[..., 1].bool()
    nll = nn.functional.cross_entropy(
      logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
    ).reshape(tokens.shape[0], -1)
    tm = mask[:, 1:].to(nll.dtype)
    per_seq = (nll * tm).sum(1) / tm.sum(1).clamp_min(1.0)
    return per_seq if self.reduction == "none" else per_seq.mean()


def make_steps(module: nn.Module, tensors: dict, lm: bool, clip: float, sigma: float) -> dict:
  """``{"plain": step, "opacus_ghost": step}``: each returns the gradients after one step.

  ``"opacus_error"`` replaces ``"opacus_ghost"`` when Opacus refuses the model.

  The Opacus step is ghost clipping (``grad_sample_mode="ghost"``), fixed batches, noise
  multiplier ``sigma``, clip ``clip``, SGD with lr 0 (parameters stay put, ``p.grad`` is the
  DP mean gradient). Raises when Opacus refuses the model (e.g. tied parameters).
  """
  tokens, mask, label = tensors["tokens"], tensors["mask"], tensors["label"]
  size = tokens.shape[0]

  def plain():
    module.zero_grad(set_to_none=True)
    loss_of(module(tokens, mask), tokens, mask, label, lm).backward()
    return [p.grad for p in module.parameters()]

  twin = copy.deepcopy(module)
  optimizer = torch.optim.SGD(twin.parameters(), lr=0.0)
  target = torch.stack([tokens, mask.long()], -1) if lm else label
  loader = torch.utils.data.DataLoader(
    torch.utils.data.TensorDataset(tokens, mask, target), batch_size=size
  )
  criterion = LmLoss() if lm else nn.CrossEntropyLoss()
  try:
    dp_model, dp_opt, dp_crit, _ = PrivacyEngine().make_private(
      module=twin,
      optimizer=optimizer,
      criterion=criterion,
      data_loader=loader,
      noise_multiplier=sigma,
      max_grad_norm=clip,
      poisson_sampling=False,
      grad_sample_mode="ghost",
    )
  except Exception as e:  # noqa: BLE001  Opacus refuses some models.
    return {"plain": plain, "opacus_error": f"{type(e).__name__}: {e}"}

  def ghost():
    dp_opt.zero_grad(set_to_none=True)
    loss = dp_crit(dp_model(tokens, mask), target)
    loss.backward()
    dp_opt.step()
    return [p.grad for p in dp_model.parameters()]

  try:
    ghost()  # Opacus raises on some models only in the first step (tied parameters).
  except Exception as e:  # noqa: BLE001
    return {"plain": plain, "opacus_error": f"{type(e).__name__}: {str(e)[:200]}"}
  return {"plain": plain, "opacus_ghost": ghost}
