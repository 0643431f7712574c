"""The project's own image denoiser: a compact ε-prediction UNet conditioned on a whole label map.

``NativeUNet(**config)(x, t, mask) -> eps`` with ``x`` (B, C, h, w) latents, ``t`` (B,) long in
[0, 1000) and ``mask`` (B, 1, H, W) long labels, H = k·h for an integer k ≥ 1.

Conditioning (``conditioning = "label_map"``): the label map is one-hot encoded and average-pooled
to each resolution of the network, giving per-pixel class fractions; a learned class embedding
turns them into an embedding map.  The map is concatenated to the input latent and, at every
ResNet block, modulates the normalised features spatially (SPADE-like: a 3×3 conv of the map gives
a per-pixel scale and shift, added to the time embedding's scale and shift).  Label 0 ("unknown")
has an embedding of its own, so an all-zero mask is exactly the null condition of classifier-free
guidance: the network trained on unlabelled tiles as class 0.

Windows must have sides that are multiples of ``size_multiple = 2 ** (len(mults) - 1)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _groups(ch: int, groups: int) -> int:
    g = min(groups, ch)
    while ch % g:
        g -= 1
    return g


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps: half sines, half cosines."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


def class_fractions(mask: torch.Tensor, num_classes: int, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W) labels -> (B, K, h, w) fraction of each class in every h×w cell."""
    if mask.dim() == 3:
        mask = mask[:, None]
    h, w = size
    H, W = mask.shape[-2:]
    if H % h or W % w or H // h != W // w:
        raise ValueError(f"mask size {(H, W)} is not the same integer multiple of the latent size {(h, w)}")
    onehot = F.one_hot(mask[:, 0].long(), num_classes).permute(0, 3, 1, 2).float()
    k = H // h
    return F.avg_pool2d(onehot, k) if k > 1 else onehot


class CondResBlock(nn.Module):
    """ResNet block whose first normalisation is modulated by time (global) and class map (spatial)."""

    def __init__(self, cin: int, cout: int, tdim: int, cdim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin, groups), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(cout, groups), cout)
        self.time = nn.Linear(tdim, 2 * cout)
        self.cond = nn.Conv2d(cdim, 2 * cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.cond.weight)
        nn.init.zeros_(self.cond.bias)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x, temb, cmap, rows=None):
        """``rows`` (CPU fast path, :class:`_Rows`): ``cmap`` holds only the distinct condition
        maps; each batch row's is found through it."""
        h = self.conv1(F.silu(self.norm1(x), inplace=rows is not None))
        tt = self.time(temb)
        st, bt = (tt if rows is None else rows.same(tt))[:, :, None, None].chunk(2, dim=1)
        sc, bc = self.cond(cmap).chunk(2, dim=1)
        if rows is None:
            h = self.norm2(h) * (1 + st + sc) + (bt + bc)
            return self.skip(x) + self.conv2(F.silu(h))
        # the same sums as above, per distinct condition (x + y = y + x exactly in IEEE arithmetic),
        # then spread over the batch rows; the products and sums over the batch are made in place
        scale, shift = rows.spread(sc, st, bc, bt)
        h = self.norm2(h).mul_(scale).add_(shift)
        h = self.conv2(F.silu(h, inplace=True))
        return h.add_(self.skip(x))


class SelfAttention(nn.Module):
    def __init__(self, ch: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(ch, groups), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        o = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.out(o.transpose(-1, -2).reshape(b, c, h, w))


class NativeUNet(nn.Module):
    conditioning = "label_map"

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int | None = None,
        num_classes: int = 4,
        base: int = 32,
        mults=(1, 2, 3),
        blocks: int = 2,
        cond_dim: int = 32,
        heads: int = 4,
        groups: int = 8,
        mid_attention: bool = True,
    ):
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels or in_channels)
        self.num_classes = int(num_classes)
        self.size_multiple = 2 ** (len(mults) - 1)
        widths = [base * int(m) for m in mults]
        tdim = 4 * base
        self.base = base
        self.share_rows = True  # the CPU fast path (:class:`_Rows`); False: every row computed on its own
        self.time_mlp = nn.Sequential(nn.Linear(base, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        # drawn on the CPU whatever the default device: under torch.device("meta") (the loader's size
        # check) the multiplication would run as a Python decomposition whose first use imports
        # torch._dynamo, about a second of every command's start-up; the values are those of before
        self.class_emb = nn.Parameter(torch.randn(self.num_classes, cond_dim, device="cpu") * 0.5)
        self.cond_in = nn.Conv2d(cond_dim, cond_dim, 3, padding=1)
        self.init_conv = nn.Conv2d(self.in_channels + cond_dim, widths[0], 3, padding=1)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        ch = widths[0]
        skips = []
        for i, w in enumerate(widths):
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(CondResBlock(ch, w, tdim, cond_dim, groups))
                ch = w
                skips.append(ch)
            self.down.append(level)
            self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1) if i < len(widths) - 1 else nn.Identity())

        self.mid1 = CondResBlock(ch, ch, tdim, cond_dim, groups)
        self.mid_attn = SelfAttention(ch, heads, groups) if mid_attention else nn.Identity()
        self.mid2 = CondResBlock(ch, ch, tdim, cond_dim, groups)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(CondResBlock(ch + skips.pop(), w, tdim, cond_dim, groups))
                ch = w
            self.up.append(level)
            self.upsample.append(
                nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, widths[i - 1], 3, padding=1))
                if i > 0
                else nn.Identity()
            )
            if i > 0:
                ch = widths[i - 1]
        self.out_norm = nn.GroupNorm(_groups(ch, groups), ch)
        self.out_conv = nn.Conv2d(ch, self.out_channels, 3, padding=1)

    def cond_map(self, mask: torch.Tensor, size: tuple[int, int], dtype) -> torch.Tensor:
        frac = class_fractions(mask, self.num_classes, size)
        emb = torch.einsum("bkhw,kc->bchw", frac, self.class_emb.float())
        return emb.to(dtype).contiguous(memory_format=torch.channels_last) if emb.is_cuda else emb.to(dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(f"NativeUNet: window {h}x{w} is not a multiple of {m}")
        t = torch.as_tensor(t, device=x.device).long().reshape(-1).expand(b)
        temb = self.time_mlp(timestep_embedding(t, self.base).to(x.dtype))
        mask = mask.to(x.device)
        # inference on the CPU only: training keeps the plain path (its in-place products would be needed by autograd)
        shared = self.share_rows and x.device.type == "cpu" and b > 1 and not torch.is_grad_enabled()
        rows = _Rows.of(mask) if shared else None
        if rows is not None:
            mask = rows.mask
        cmap = self.cond_map(mask, (h, w), x.dtype)
        cmap = cmap + F.silu(self.cond_in(cmap))
        cmaps = [cmap]
        for _ in range(len(self.down) - 1):
            cmaps.append(F.avg_pool2d(cmaps[-1], 2))
        full = cmap if rows is None else rows.gather(cmap).contiguous(memory_format=_format(cmap))

        hidden = self.init_conv(torch.cat([x, full], dim=1))
        skips = []
        for i, (level, down) in enumerate(zip(self.down, self.downsample)):
            for block in level:
                hidden = block(hidden, temb, cmaps[i], rows)
                skips.append(hidden)
            hidden = down(hidden)
        hidden = self.mid1(hidden, temb, cmaps[-1], rows)
        hidden = self.mid_attn(hidden)
        hidden = self.mid2(hidden, temb, cmaps[-1], rows)
        for j, (level, up) in enumerate(zip(self.up, self.upsample)):
            i = len(self.down) - 1 - j
            for block in level:
                hidden = block(torch.cat([hidden, skips.pop()], dim=1), temb, cmaps[i], rows)
            hidden = up(hidden)
        return self.out_conv(F.silu(self.out_norm(hidden)))


def _format(a: torch.Tensor) -> torch.memory_format:
    """``a``'s memory format (channels_last or contiguous)."""
    cl = a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


class _Rows:
    """Batch rows that share their condition (the CPU fast path of :class:`NativeUNet`).

    Classifier-free guidance runs every window's null pass (an all-zero mask) next to its
    conditional pass, and the layout model runs null passes only; every row of one network call
    has the same time step.  The condition branch (class map, its 3x3 convolutions at every block,
    the per-pixel scale and shift) depends on nothing but the mask and the time step, so it is
    computed once per distinct mask (all null rows are one), and once for all rows where their time
    embeddings are equal, then spread over the rows.  Each value is computed by the same
    operations on the same inputs as without sharing, row by row; only the number of rows the
    convolutions see changes.  Used without autograd only (sampling runs under inference mode).
    """

    def __init__(self, mask, inverse, n):
        self.mask, self.inverse, self.n = mask, inverse, n

    @classmethod
    def of(cls, mask: torch.Tensor) -> "_Rows":
        n = mask.shape[0]
        null = ~mask.reshape(n, -1).any(dim=1)
        k = int(null.sum())
        if k < 2:
            return cls(mask, None, n)
        if k == n:  # two rows, not one: oneDNN convolves a batch of one another way (other roundings)
            return cls(mask[:2], None, n)
        # distinct conditions: the conditional rows as they are, then one null row
        cond = torch.nonzero(~null).flatten()
        inverse = torch.full((n,), len(cond), dtype=torch.long)
        inverse[cond] = torch.arange(len(cond))
        keep = torch.cat([cond, torch.nonzero(null)[:1].flatten()])
        return cls(mask[keep], inverse, n)

    @staticmethod
    def same(a: torch.Tensor) -> torch.Tensor:
        """``a``'s first row alone when every row equals it (one time step for all), else ``a``."""
        return a[:1] if torch.equal(a, a[:1].expand_as(a)) else a

    def gather(self, a: torch.Tensor) -> torch.Tensor:
        """(distinct, ...) -> (rows, ...): every row's own (a view where all rows share one)."""
        if a.shape[0] == self.n:
            return a
        if self.inverse is None:  # all rows share row 0
            return a[:1].expand(self.n, *a.shape[1:])
        return a[self.inverse]  # keeps a's memory format (index_select would make channels_last rows NCHW)

    def spread(self, sc, st, bc, bt):
        """The block's per-pixel scale ``1 + st + sc`` and shift ``bt + bc`` for every row."""
        if st.shape[0] == 1:  # one time step: one sum per distinct condition
            return self.gather(sc + (1 + st)), self.gather(bc + bt)
        return self.gather(sc) + (1 + st), self.gather(bc) + bt
