"""The fast path of a denoiser: bf16/fp16 autocast, ``channels_last``, optional ``torch.compile``, and a
batch size bounded by a memory budget.  Plus the counting tools the benchmark and the budget use
(FLOPs of one forward, live activation bytes), which run on the ``meta`` device: nothing is
computed, so they cost nothing even for the published 172 M-parameter network.

:class:`FastDenoiser` wraps a network (``net(x, t, mask) -> eps``) and is a denoiser in its own
right: the samplers take it in place of the raw network.  What stays float32 is decided outside
it: the latent state, the schedule math and the solvers' updates (``solvers.DDIM.step`` casts ε to
float32) never enter the autocast region, and guidance composites the passes in float32
(``guidance.guided_eps`` casts every network output with ``.float()``).

Nothing here imports napari or Qt.
"""
from __future__ import annotations

import os
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from src_models.models.release.unet import ChannelLayerNorm, WSConv2d

FLOAT32_EPS = 1e-5  # the ε of weight standardisation and channel LayerNorm for float32 inputs

# dense bf16 rate a card reaches, FLOP/s, by a substring of ``torch.cuda.get_device_name``: the H100's
# is the rate measured in ``shared/reference/README.md`` (the data sheet says 989 TFLOP/s); the H200
# has the same GH100 compute as the H100 SXM, so the same measured rate is assumed
BF16_PEAK_FLOPS = {
    "H100": 790e12,
    "H200": 790e12,
}

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead")


def bf16_peak(card_name: str | None) -> float | None:
    """The card's dense bf16 FLOP/s from :data:`BF16_PEAK_FLOPS`, or ``None`` when unknown."""
    if not card_name:
        return None
    for key, rate in BF16_PEAK_FLOPS.items():
        if key.lower() in card_name.lower():
            return rate
    return None


class _Float32WSConv2d(WSConv2d):
    """A weight-standardised conv whose standardised weight is computed once, in float32 with
    float32's ε, and kept as a (non-persistent) buffer: the same function as :class:`WSConv2d` on
    float32 inputs, on any input dtype; refreshed when the weight changes."""

    def refresh(self) -> None:
        w = self.weight
        key = (w.data_ptr(), w._version, w.device, w.dtype)
        if getattr(self, "_w_key", None) == key:
            return
        wf = w.detach().float()
        mean = wf.mean(dim=(1, 2, 3), keepdim=True)
        var = wf.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        self.register_buffer("w_std", (wf - mean) * torch.rsqrt(var + FLOAT32_EPS), persistent=False)
        self._w_key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "w_std", None) is None:
            self.refresh()
        return F.conv2d(x, self.w_std, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _Float32ChannelLayerNorm(ChannelLayerNorm):
    """Channel LayerNorm computed in float32 with float32's ε whatever the input dtype (float32 out,
    as autocast does with its own norms)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + FLOAT32_EPS) * self.g.float()


def float32_norms_(net: nn.Module) -> int:
    """Convert ``net``'s weight-standardised convs and channel LayerNorms in place to their float32
    forms above; returns how many modules were converted.  Parameters and state-dict keys are
    unchanged; on float32 inputs the network computes the same function."""
    n = 0
    for m in net.modules():
        if type(m) is WSConv2d:
            m.__class__ = _Float32WSConv2d
            m.refresh()
            n += 1
        elif type(m) is ChannelLayerNorm:
            m.__class__ = _Float32ChannelLayerNorm
            n += 1
    return n


class FastDenoiser(nn.Module):
    """A denoiser that runs ``unet`` the fast way.  Same call, same ``conditioning`` and
    ``num_classes`` (and ``size_multiple`` when the network has one).

    ``dtype``
        autocast dtype on CUDA (default ``torch.bfloat16``; ``torch.float16`` has the same
        tensor-core rate on an H100 and 3 more mantissa bits, see ``benchmarks/NOTES.md``);
        ``None`` or ``torch.float32`` runs in float32.  The CPU runs float32 unless
        ``autocast_cpu=True`` (CPU bf16 is slower than float32 on most CPUs without AMX).
    ``float32_norms``
        (default ``True``) run weight standardisation and the channel LayerNorm in float32 with
        float32's ε (:func:`float32_norms_`; the standardised weights are computed once and cached).
        The release's modules take ε from their input's dtype (1e-3 under bf16 or fp16 autocast,
        1e-5 in float32), which changes the function itself, not just its rounding: with the
        release's ε, autocast misses the float32 reference by about 3 % per network call even in
        fp16 (CPU, random weights); with float32's ε fp16 misses it by 0.2 %.
    ``channels_last``
        convert the network's 4-D weights and every input to NHWC (cuDNN's tensor-core layout;
        oneDNN's preferred one on the CPU).  The wrapped network is converted in place; its
        parameters' values and state-dict keys do not change.
    ``attention``
        set the mask-attention path of a network that has one (``ImageUNet``):
        ``"linear_exact"`` (O(HW), the default of ``ImageUNet``) or ``"softmax"``.
    ``compile``
        ``False``; ``True`` (mode ``"default"``); or one of :data:`COMPILE_MODES`.  The batch axis
        is marked dynamic (a level's pass count varies with the grid offset and the labels under it),
        so one graph serves every level; the spatial size is static.  ``"default"`` is the
        recommended mode: ``"max-autotune*"`` autotunes every conv shape (minutes of warm-up for a
        small or no gain where cuDNN already picks the kernels), and ``"reduce-overhead"`` records a
        CUDA graph per distinct batch size, which buys nothing here: a call of a few dozen rows of
        the published network takes tens of milliseconds on the GPU while launching its kernels
        takes a few, and with no host-device synchronisation inside a level the launches run ahead
        of the GPU anyway.
    ``window``
        the window side the compiled graph is for; inputs of another size (a small area's
        smaller window) run the eager network instead of triggering a recompile.
    """

    def __init__(
        self,
        unet: nn.Module,
        *,
        dtype: torch.dtype | None = torch.bfloat16,
        channels_last: bool = True,
        compile: bool | str = False,
        window: int | None = None,
        attention: str | None = None,
        autocast_cpu: bool = False,
        float32_norms: bool = True,
    ):
        super().__init__()
        self.unet = unet
        self.conditioning = getattr(unet, "conditioning", "per_class")
        self.num_classes = getattr(unet, "num_classes", None)
        if hasattr(unet, "size_multiple"):
            self.size_multiple = unet.size_multiple
        self.dtype = None if dtype in (None, torch.float32) else dtype
        self.autocast_cpu = bool(autocast_cpu)
        self.channels_last = bool(channels_last)
        self.window = None if window is None else int(window)
        if attention is not None:
            if not hasattr(unet, "attention"):
                raise ValueError(f"{type(unet).__name__} has no attention path to choose")
            unet.attention = attention
        if self.channels_last:
            unet.to(memory_format=torch.channels_last)
        self.float32_norms = bool(float32_norms)
        if self.float32_norms:
            float32_norms_(unet)
        if compile is True:
            compile = "default"
        if compile and compile not in COMPILE_MODES:
            raise ValueError(f"compile must be False, True or one of {COMPILE_MODES}, got {compile!r}")
        self.compile_mode = compile or None
        self._standardised = [m for m in unet.modules() if isinstance(m, _Float32WSConv2d)]
        self._compiled = torch.compile(unet, mode=compile, dynamic=None) if compile else None

    def describe(self) -> dict:
        """The settings, as plain values (for benchmark records)."""
        return {
            "dtype": str(self.dtype).replace("torch.", "") if self.dtype is not None else "float32",
            "channels_last": self.channels_last,
            "compile": self.compile_mode or False,
            "attention": getattr(self.unet, "attention", None),
            "float32_norms": self.float32_norms,
            "window": self.window,
        }

    def _autocast(self, device: torch.device):
        if self.dtype is None:
            return nullcontext()
        if device.type == "cuda" or (device.type == "cpu" and self.autocast_cpu):
            return torch.autocast(device_type=device.type, dtype=self.dtype)
        return nullcontext()

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.float32_norms:
            for m in self._standardised:
                m.refresh()  # no-op unless the weights changed (eager, outside any compiled graph)
        fn = self.unet
        if self._compiled is not None and (self.window is None or tuple(x.shape[-2:]) == (self.window, self.window)):
            fn = self._compiled
            for a in (x, t, mask):
                if torch.is_tensor(a) and a.dim() > 0 and a.shape[0] > 1:
                    torch._dynamo.maybe_mark_dynamic(a, 0)
        with self._autocast(x.device):
            return fn(x, t, mask)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512_BF16 or AMX), from ``/proc/cpuinfo``
    (Linux) or torch's ISA level (``AVX512`` at least and AMX); ``False`` when it cannot be told."""
    from src_models.models.cpu import native_bf16_flags

    native = native_bf16_flags()
    if native is not None:
        return native
    return "AMX" in str(torch.backends.cpu.get_cpu_capability()).upper()


def default_precision(device: torch.device | str) -> str:
    """The arithmetic of a run that leaves its precision open, on ``device``: what
    ``DIFFINFINITE_PRECISION`` names where it is set; ``bf16`` on a CPU with native bfloat16
    (AVX512_BF16 or AMX: 1.6 x the float32 rate with the same held-out quality, docs/cpu_speed.md);
    ``float32`` everywhere else (an emulated bf16 is slower; CUDA's fast path has its own fp16 autocast)."""
    from src_models.models.cpu import precision_override

    override = precision_override()
    if override is not None:
        return override
    return "bf16" if torch.device(device).type == "cpu" and cpu_has_native_bf16() else "float32"


def resolve_precision(precision: str | None, device: torch.device | str) -> str:
    """``precision`` as a run on ``device`` computes in: None or ``"auto"`` is :func:`default_precision`;
    ``float32`` and ``bf16`` stay; anything else raises ValueError."""
    if precision in (None, "auto"):
        return default_precision(device)
    if precision not in ("float32", "bf16"):
        raise ValueError(f"precision must be auto, float32 or bf16, got {precision!r}")
    return precision


def warn_if_bf16_emulated(device: torch.device | str, stacklevel: int = 2) -> None:
    """A RuntimeWarning when bfloat16 is asked for on a CPU that only emulates it (slower than float32)."""
    if torch.device(device).type == "cpu" and not cpu_has_native_bf16():
        import warnings

        warnings.warn("this CPU has neither AVX512_BF16 nor AMX: bf16 is emulated and slower than float32",
                      RuntimeWarning, stacklevel=stacklevel + 1)


def unwrap(net: nn.Module) -> nn.Module:
    """The network under any :class:`FastDenoiser` wrappers."""
    while isinstance(net, FastDenoiser):
        net = net.unet
    return net


# ----------------------------------------------------------------------------- counting on meta


def _meta_state(net: nn.Module) -> dict:
    """Parameters and buffers of ``net`` as meta tensors (shapes only; nothing is copied)."""
    return {name: torch.empty(p.shape, dtype=p.dtype, device="meta")
            for name, p in list(net.named_parameters()) + list(net.named_buffers())}


def _example(net: nn.Module, batch: int, window: int, mask_factor: int, device):
    channels = int(getattr(net, "channels", getattr(net, "in_channels", 4)))
    x = torch.zeros((batch, channels, window, window), dtype=torch.float32, device=device)
    t = torch.zeros((batch,), dtype=torch.long, device=device)
    mask = torch.zeros((batch, 1, window * mask_factor, window * mask_factor), dtype=torch.long, device=device)
    return x, t, mask


def forward_flops(net: nn.Module, window: int, mask_factor: int = 1, batch: int = 1) -> int:
    """FLOPs of one forward of ``batch`` rows (``torch.utils.flop_counter.FlopCounterMode``: matmuls,
    convolutions and attention; elementwise work is not counted), on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    net = unwrap(net)
    state = _meta_state(net)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        torch.func.functional_call(net, state, _example(net, batch, window, mask_factor, "meta"))
    return int(counter.get_total_flops())


class _PeakLiveBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Tracks the bytes of the storages that ops create and that are still alive; keeps the peak."""

    def __init__(self):
        super().__init__()
        from torch.multiprocessing.reductions import StorageWeakRef

        self._ref = StorageWeakRef
        self.live: dict[int, tuple] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        dead = [key for key, (ref, _) in self.live.items() if ref.expired()]
        for key in dead:
            self.current -= self.live.pop(key)[1]
        for leaf in torch.utils._pytree.tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                st = leaf.untyped_storage()
                key = st._cdata
                if key not in self.live:
                    self.live[key] = (self._ref(st), st.nbytes())
                    self.current += st.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def activation_bytes(net: nn.Module, window: int, mask_factor: int = 1, batch: int = 1) -> int:
    """Peak bytes of the tensors one float32 forward creates (activations, standardised weights,
    masks; not the parameters or the inputs), traced on the meta device.

    Under CUDA bf16 autocast the convolutions give bf16 outputs and the norms float32, so the real
    activations take less (down to about half); allocator rounding and cuDNN workspaces come on
    top (see :func:`batch_budget`'s ``fraction``)."""
    net = unwrap(net)
    state = _meta_state(net)
    x, t, mask = _example(net, batch, window, mask_factor, "meta")
    tracker = _PeakLiveBytes()
    with torch.inference_mode(), tracker:
        out = torch.func.functional_call(net, state, (x, t, mask))
        del out
    return int(tracker.peak)


def bytes_per_row(net: nn.Module, window: int, mask_factor: int = 1) -> int:
    """Memory one more batch row costs: the network's activations (slope of the meta trace between
    batches 8 and 16: at small batches the transient standardised weights dominate the peak, from
    a few rows on the activations do and the peak grows linearly) plus the guidance's per-pass
    tensors (window latents and pass masks)."""
    lo = activation_bytes(net, window, mask_factor, 8)
    hi = activation_bytes(net, window, mask_factor, 16)
    net = unwrap(net)
    channels = int(getattr(net, "channels", getattr(net, "in_channels", 4)))
    side = window * mask_factor
    # guided_eps per pass: the gathered class mask, the pass mask and its comparison (int64, bool),
    # the stacked input and the float32 output (x, eps, difference)
    guidance = side * side * (8 + 8 + 1) + 3 * channels * window * window * 4
    return max((hi - lo) // 8, 1) + guidance


def free_bytes(device: torch.device | str) -> int | None:
    """Memory a batch may use now: free device memory plus what PyTorch's CUDA cache holds unused;
    on the CPU the available RAM; ``None`` when it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "cpu":
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return None


def batch_budget(
    model: nn.Module,
    window: int,
    device: torch.device | str,
    bytes_free: int | None = None,
    *,
    mask_factor: int = 1,
    per_row: int | None = None,
    fraction: float = 0.7,
    cap: int | None = None,
) -> int:
    """Rows per network call (``max_batch`` of the samplers) that fit a memory budget.

    ``per_row`` bytes (default :func:`bytes_per_row`, float32 trace: an upper bound under bf16
    autocast) times the rows must stay under ``fraction`` of ``bytes_free`` (default
    :func:`free_bytes` of ``device``); the rest covers allocator rounding, cuDNN workspaces and
    the latent state.  ``cap`` bounds the result: by default 512 on CUDA (beyond a few hundred rows
    the GPU is saturated and only memory grows) and 32 elsewhere (a CPU gains nothing from large
    batches; 32 is the samplers' default).  Never less than 1.
    """
    device = torch.device(device)
    if cap is None:
        cap = 512 if device.type == "cuda" else 32
    if bytes_free is None:
        bytes_free = free_bytes(device)
    if bytes_free is None:
        return max(1, int(cap))
    if per_row is None:
        per_row = bytes_per_row(model, window, mask_factor)
    rows = int(bytes_free * fraction) // max(int(per_row), 1)
    return int(max(1, min(rows, int(cap))))


class HostTransfers(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts, while active, what would make the host wait for a device (run the code on ``meta``).

    ``blocking``: host-to-device copies without ``non_blocking`` (on CUDA each waits for the
    stream to drain); ``mixed``: ops that take a host tensor of one or more dimensions next to a
    device tensor (the host tensor is copied inside the op, blocking); device-to-host reads
    (``.item()``, ``.cpu()``, ``bool()``, ``torch.unique``/``nonzero`` with their data-dependent
    shapes) cannot be counted because the meta device has no data: they raise.
    """

    def __init__(self, device_type: str = "meta"):
        super().__init__()
        self.device_type = device_type
        self.blocking = 0
        self.non_blocking = 0
        self.mixed = 0

    def _is_dev(self, a) -> bool:
        return isinstance(a, torch.Tensor) and a.device.type == self.device_type

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        aten = torch.ops.aten
        if packet in (aten.to, aten._to_copy, aten.copy_):
            if packet is aten.copy_:
                src, dst_dev = args[1], args[0].device
                non_blocking = bool(args[2]) if len(args) > 2 else bool(kwargs.get("non_blocking", False))
            else:
                src = args[0]
                dst_dev = kwargs.get("device")
                dev_args = [a for a in args[1:] if isinstance(a, (torch.device, str))]
                if dst_dev is None and dev_args:
                    dst_dev = dev_args[0]
                bools = [a for a in args[1:] if isinstance(a, bool)]
                non_blocking = bool(kwargs.get("non_blocking", bools[0] if bools else False))
            if (isinstance(src, torch.Tensor) and src.device.type == "cpu" and dst_dev is not None
                    and torch.device(dst_dev).type == self.device_type):
                if non_blocking:
                    self.non_blocking += 1
                else:
                    self.blocking += 1
        else:
            leaves = torch.utils._pytree.tree_leaves((args, kwargs))
            if any(self._is_dev(a) for a in leaves) and any(
                isinstance(a, torch.Tensor) and a.device.type == "cpu" and a.dim() > 0 for a in leaves
            ):
                self.mixed += 1
        return func(*args, **kwargs)


def fast_setup(
    unet: nn.Module,
    device: torch.device | str,
    window: int,
    *,
    mask_factor: int = 1,
    dtype: torch.dtype | None = torch.float16,
    compile: bool | str = False,
    max_batch: int | None = None,
    precision: str = "float32",
) -> tuple[nn.Module, int]:
    """The denoiser and batch size a sampler should use for ``unet`` on ``device``: what
    ``synthesis.synthesise`` (or any caller of ``sampler.sample_area``) hands over instead of the raw
    network and a fixed ``max_batch``.

    CUDA: :class:`FastDenoiser` with autocast in ``dtype`` (default float16: same tensor-core rate
    as bf16 on an H100 and within the 1e-2 guard on the CPU, where bf16 is not; see
    ``benchmarks/NOTES.md``), channels_last, optional compile for ``window``; the batch from
    :func:`batch_budget`.  CPU: float32 with channels_last (faster convolutions in oneDNN), batch 32;
    ``precision="bf16"``: bfloat16 autocast (fast only where the CPU has AVX512_BF16 or AMX, where
    :func:`default_precision` makes it a run's default; elsewhere oneDNN emulates it, slower than
    float32: a warning says so; see ``docs/cpu_speed.md``).  On CUDA ``precision="bf16"`` picks bfloat16 over the default ``dtype``.
    Elsewhere (MPS): the network as it is, batch 32.  ``max_batch`` overrides the budget (the
    caller halves it on out-of-memory).  Wrap once per loaded model: the network is converted in
    place and a compiled graph is kept by the wrapper.
    """
    device = torch.device(device)
    if precision not in ("float32", "bf16"):
        raise ValueError(f"precision must be float32 or bf16, got {precision!r}")
    bf16 = precision == "bf16"
    if isinstance(unet, FastDenoiser):
        den = unet
    elif device.type == "cuda":
        den = FastDenoiser(unet, dtype=torch.bfloat16 if bf16 else dtype, channels_last=True, compile=compile,
                           window=window)
    elif device.type == "cpu":
        if bf16:
            warn_if_bf16_emulated(device, stacklevel=3)
        den = FastDenoiser(unet, dtype=torch.bfloat16 if bf16 else None, channels_last=True, autocast_cpu=bf16)
    else:
        den = unet
    if max_batch is None:
        max_batch = batch_budget(den, window, device, mask_factor=mask_factor) if device.type == "cuda" else 32
    return den, int(max_batch)
