"""The networks of the published DiffInfinite release, written from the facts in
``shared/reference/README.md`` so that the release's checkpoints load with ``strict=True``.

Two networks share one skeleton (initial 7×7 conv whose output is concatenated back at the end,
ResNet blocks conditioned on time + class, an attention layer per level, skips, down/up convs):

:class:`ImageUNet` (registry name ``release_image``)
    ε-prediction under a class mask.  The class embedding is that of the *largest* label in the
    mask; every attention layer is a cross-attention whose queries come from the binarised mask.
:class:`MaskUNet` (registry name ``release_mask``)
    ε-prediction of mask latents, conditioned on a tissue subtype, with a learned null embedding
    for classifier-free guidance; linear attention in the levels, full attention in the middle.

Numerics follow the release: weight-standardised convolutions and the channel LayerNorm take
their ε from the dtype of their input (1e-5 for float32, 1e-3 otherwise, e.g. under bf16
autocast); GroupNorm keeps PyTorch's 1e-5.

Nothing here imports napari or Qt.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_MODES = ("linear_exact", "softmax")


def _eps_for(x: torch.Tensor) -> float:
    return 1e-5 if x.dtype == torch.float32 else 1e-3


# ----------------------------------------------------------------------------- building blocks


class WSConv2d(nn.Conv2d):
    """Conv2d whose weight is standardised per output channel (biased variance) at every call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        w = (w - mean) * torch.rsqrt(var + _eps_for(x))
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) tensor, gain only (``g``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + _eps_for(x)) * self.g


class SinusoidalEmbedding(nn.Module):
    """Width ``dim``: half sines, half cosines, frequencies exp(-ln(10000)·i/(half-1))."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        step = math.log(10000.0) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -step)
        args = t.to(torch.float32)[:, None] * freqs[None, :]
        return torch.cat((args.sin(), args.cos()), dim=-1)


class ConvBlock(nn.Module):
    """Weight-standardised 3×3 conv, GroupNorm, optional x·(scale+1)+shift, SiLU, dropout."""

    def __init__(self, dim_in: int, dim_out: int, groups: int, dropout: float = 0.05):
        super().__init__()
        self.proj = WSConv2d(dim_in, dim_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, dim_out)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, scale_shift=None):
        x = self.norm(self.proj(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.dropout(self.act(x))


class ResnetBlock(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, cond_dim: int, groups: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, dim_out * 2))
        self.block1 = ConvBlock(dim_in, dim_out, groups)
        self.block2 = ConvBlock(dim_out, dim_out, groups)
        self.res_conv = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x, cond):
        scale_shift = self.mlp(cond)[:, :, None, None].chunk(2, dim=1)
        h = self.block1(x, scale_shift)
        h = self.block2(h)
        return h + self.res_conv(x)


class PreNorm(nn.Module):
    """Channel LayerNorm of the features, then ``fn``; extra arguments go to ``fn`` untouched."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = ChannelLayerNorm(dim)

    def forward(self, x, *args):
        return self.fn(self.norm(x), *args)


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x, *args):
        return self.fn(x, *args) + x


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, heads·d, H, W) -> (B, heads, d, H·W)."""
    b, c = t.shape[:2]
    return t.reshape(b, heads, c // heads, -1)


# ----------------------------------------------------------------------------- attention layers


class MaskCrossAttention(nn.Module):
    """Cross-attention of the image UNet: queries from the binary class mask, keys and values from
    the (normalised) features.

    With the mask repeated over the C channels and a bias-free 1×1 query conv, every query is either
    0 (mask 0) or one fixed vector q̄ per head (mask 1).  Hence each output pixel takes one of two
    values per head: the plain mean of the values, or the softmax(q̄·k)-weighted mean.

    ``mode = "linear_exact"`` computes just those two values (O(HW)); ``mode = "softmax"`` forms the
    full HW×HW attention as the release does.  Both use the same weights and agree to rounding.
    """

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32, mode: str = "linear_exact"):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head**-0.5
        hidden = heads * dim_head
        self.to_kv = nn.Conv2d(dim, hidden * 2, 1, bias=False)
        self.to_q = nn.Conv2d(dim, hidden, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)
        self.mode = mode

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, H, W) normalised features; ``mask`` (B, 1, H, W) in {0, 1}."""
        b, c, h, w = x.shape
        k, v = self.to_kv(x).chunk(2, dim=1)
        k, v = _split_heads(k, self.heads), _split_heads(v, self.heads)  # (B, heads, d, N)
        if self.mode == "softmax":
            q = _split_heads(self.to_q(mask.to(x.dtype).expand(b, c, h, w)), self.heads)
            # softmax(q·k / sqrt(d)) v over all positions (flash / memory-efficient kernels where available)
            q, k, v = (a.transpose(-1, -2) for a in (q, k, v))  # (B, heads, N, d)
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
            return self.to_out(out.transpose(-1, -2).reshape(b, -1, h, w))
        if self.mode != "linear_exact":
            raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {self.mode!r}")
        # the query of a mask-1 pixel: the 1×1 conv applied to a vector of ones
        q1 = self.to_q.weight.sum(dim=(1, 2, 3)).to(x.dtype)  # (heads·d,)
        q1 = q1.reshape(1, self.heads, self.dim_head, 1) * self.scale
        weights = (q1 * k).sum(dim=2).softmax(dim=-1)  # (B, heads, N)
        on = torch.einsum("bhn,bhdn->bhd", weights, v)  # mask 1: weighted mean of the values
        off = v.mean(dim=-1)  # mask 0: every key scores 0, plain mean
        both = torch.stack((off, on), dim=1).reshape(b * 2, -1, 1, 1)
        both = self.to_out(both).reshape(b, 2, c, 1, 1)
        return torch.where(mask > 0, both[:, 1], both[:, 0])


class LinearAttention(nn.Module):
    """Linear attention of the mask UNet's levels: q softmax over channels, k over positions."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), ChannelLayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = (_split_heads(t, self.heads) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        v = v / (h * w)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(b, -1, h, w))


class FullAttention(nn.Module):
    """Plain multi-head softmax self-attention (the mask UNet's middle)."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = (_split_heads(t, self.heads).transpose(-1, -2) for t in self.to_qkv(x).chunk(3, dim=1))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # softmax(q·k·scale) v
        return self.to_out(out.transpose(-1, -2).reshape(b, -1, h, w))


# ----------------------------------------------------------------------------- the skeleton


class _ReleaseUNet(nn.Module):
    """Shared skeleton; subclasses provide the attention layers and the class embedding."""

    _learned_null = False

    def __init__(
        self,
        dim: int,
        num_classes: int,
        dim_mults=(1, 2, 4),
        channels: int = 4,
        resnet_block_groups: int = 2,
        block_per_layer: int = 2,
        heads: int = 4,
        dim_head: int = 32,
    ):
        super().__init__()
        if block_per_layer < 1:
            raise ValueError("block_per_layer must be at least 1")
        self.dim = dim
        self.channels = channels
        self.num_classes = num_classes
        self.block_per_layer = block_per_layer
        self._heads, self._dim_head = heads, dim_head
        groups = resnet_block_groups
        if self._learned_null:  # registered first, so that state_dict order matches the release
            self.null_classes_emb = nn.Parameter(torch.randn(dim))

        self.init_conv = nn.Conv2d(channels, dim, 7, padding=3)
        dims = [dim] + [dim * m for m in dim_mults]
        in_out = list(zip(dims[:-1], dims[1:]))
        emb = dim * 4
        cond_dim = emb * 2  # time embedding and class embedding, concatenated

        self.time_mlp = nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, emb), nn.GELU(), nn.Linear(emb, emb))
        self.classes_emb = nn.Embedding(num_classes, dim)
        self.classes_mlp = nn.Sequential(nn.Linear(dim, emb), nn.GELU(), nn.Linear(emb, emb))

        self.downs = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(in_out):
            last = i == len(in_out) - 1
            self.downs.append(
                nn.ModuleList(
                    [ResnetBlock(d_in, d_in, cond_dim, groups) for _ in range(block_per_layer)]
                    + [
                        Residual(PreNorm(d_in, self._level_attention(d_in))),
                        nn.Conv2d(d_in, d_out, 3, padding=1) if last else nn.Conv2d(d_in, d_out, 4, 2, 1),
                    ]
                )
            )
        self.ups = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(reversed(in_out)):
            last = i == len(in_out) - 1
            up = (
                nn.Conv2d(d_out, d_in, 3, padding=1)
                if last
                else nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(d_out, d_in, 3, padding=1))
            )
            self.ups.append(
                nn.ModuleList(
                    [ResnetBlock(d_out + d_in, d_out, cond_dim, groups) for _ in range(block_per_layer)]
                    + [Residual(PreNorm(d_out, self._level_attention(d_out))), up]
                )
            )
        mid = dims[-1]
        self.mid_block1 = ResnetBlock(mid, mid, cond_dim, groups)
        self.mid_attn = Residual(PreNorm(mid, self._mid_attention(mid)))
        self.mid_block2 = ResnetBlock(mid, mid, cond_dim, groups)
        self.final_res_block = ResnetBlock(dim * 2, dim, cond_dim, groups)
        self.final_conv = nn.Conv2d(dim, channels, 1)

    def _level_attention(self, dim: int) -> nn.Module:
        raise NotImplementedError

    def _mid_attention(self, dim: int) -> nn.Module:
        raise NotImplementedError

    def _attend(self, layer: nn.Module, x: torch.Tensor, ctx) -> torch.Tensor:
        raise NotImplementedError

    def _run(self, x: torch.Tensor, t: torch.Tensor, class_vec: torch.Tensor, ctx) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        cond = torch.cat((self.time_mlp(t), self.classes_mlp(class_vec)), dim=-1)
        n = self.block_per_layer

        x = self.init_conv(x)
        r = x.clone()
        skips = []
        for level in self.downs:
            for i in range(n):
                x = level[i](x, cond)
                if i < n - 1:
                    skips.append(x)
            x = self._attend(level[n], x, ctx)
            skips.append(x)
            x = level[n + 1](x)

        x = self.mid_block1(x, cond)
        x = self._attend(self.mid_attn, x, ctx)
        x = self.mid_block2(x, cond)

        for level in self.ups:
            for i in range(n):
                x = level[i](torch.cat((x, skips.pop()), dim=1), cond)
            x = self._attend(level[n], x, ctx)
            x = level[n + 1](x)

        x = self.final_res_block(torch.cat((x, r), dim=1), cond)
        return self.final_conv(x)


class ImageUNet(_ReleaseUNet):
    """The release's image UNet: ``forward(x, t, mask)`` -> ε.

    ``mask`` (B, 1, H, W) holds class labels (any numeric dtype) at the latent size or an integer
    multiple of it.  The class embedding is that of the largest label of each mask; the attention
    layers see the mask max-pooled to their feature size and binarised (> 0).

    ``attention`` picks the mask attention path for every layer: ``"linear_exact"`` (default,
    O(HW)) or ``"softmax"`` (the release's O(HW²) form); same weights, same result.
    """

    conditioning = "per_class"

    def __init__(
        self,
        dim: int = 256,
        num_classes: int = 5,
        dim_mults=(1, 2, 4),
        channels: int = 4,
        resnet_block_groups: int = 2,
        block_per_layer: int = 2,
        heads: int = 4,
        dim_head: int = 32,
        attention: str = "linear_exact",
    ):
        super().__init__(dim, num_classes, dim_mults, channels, resnet_block_groups, block_per_layer, heads, dim_head)
        self.attention = attention

    @property
    def attention(self) -> str:
        return self._attention

    @attention.setter
    def attention(self, mode: str) -> None:
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {mode!r}")
        self._attention = mode
        for m in self.modules():
            if isinstance(m, MaskCrossAttention):
                m.mode = mode

    def _level_attention(self, dim):
        return MaskCrossAttention(dim, self._heads, self._dim_head)

    _mid_attention = _level_attention

    def _attend(self, layer, x, ctx):
        h, w = x.shape[-2:]
        cache = ctx["cache"]
        if (h, w) not in cache:
            m = ctx["mask"]
            if m.shape[-2:] != (h, w):
                m = F.adaptive_max_pool2d(m, (h, w))
            cache[(h, w)] = (m > 0).to(x.dtype)
        return layer(x, cache[(h, w)])

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if mask.dim() != 4 or mask.shape[1] != 1:
            raise ValueError(f"mask must be (B, 1, H, W), got {tuple(mask.shape)}")
        mh, mw = mask.shape[-2:]
        if mh % x.shape[-2] or mw % x.shape[-1]:
            raise ValueError(f"mask size {(mh, mw)} is not a multiple of the latent size {tuple(x.shape[-2:])}")
        mask_f = mask.to(torch.float32)
        labels = mask_f.flatten(1).amax(dim=1).round().long()
        # checked on the CPU only: on an accelerator the check would synchronise every call
        # (the samplers validate masks before they start)
        if labels.device.type == "cpu" and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"mask labels must lie in 0..{self.num_classes - 1}")
        class_vec = self.classes_emb(labels)
        return self._run(x, t, class_vec, {"mask": mask_f, "cache": {}})


class MaskUNet(_ReleaseUNet):
    """The release's mask UNet: ``forward(x, t, classes, cond_drop_prob=0.0)`` -> ε.

    ``classes`` (B,) long subtype indices.  Each row's class embedding is replaced by the learned
    ``null_classes_emb`` with probability ``cond_drop_prob`` (1.0 gives the null condition).
    """

    _learned_null = True

    def __init__(
        self,
        dim: int = 64,
        num_classes: int = 2,
        dim_mults=(1, 2, 4, 8),
        channels: int = 4,
        resnet_block_groups: int = 2,
        block_per_layer: int = 2,
        heads: int = 4,
        dim_head: int = 32,
    ):
        super().__init__(dim, num_classes, dim_mults, channels, resnet_block_groups, block_per_layer, heads, dim_head)

    def _level_attention(self, dim):
        return LinearAttention(dim, self._heads, self._dim_head)

    def _mid_attention(self, dim):
        return FullAttention(dim, self._heads, self._dim_head)

    def _attend(self, layer, x, ctx):
        return layer(x)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        classes: torch.Tensor,
        cond_drop_prob: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        classes = torch.as_tensor(classes, device=x.device).long().reshape(-1)
        if classes.numel() == 1 and x.shape[0] > 1:
            classes = classes.expand(x.shape[0])
        emb = self.classes_emb(classes)
        if cond_drop_prob >= 1.0:
            emb = self.null_classes_emb.to(emb.dtype).expand_as(emb)
        elif cond_drop_prob > 0.0:
            where = "cpu" if generator is None else generator.device
            u = torch.rand(classes.shape[0], generator=generator, device=where)
            if u.device != x.device:
                from src_models.sampling.guidance import host_to_device

                u = host_to_device(u, x.device)  # queued behind the stream's work, no sync
            keep = (u >= cond_drop_prob)[:, None]
            emb = torch.where(keep, emb, self.null_classes_emb.to(emb.dtype)[None, :])
        return self._run(x, t, emb, None)
