"""Cancelling a run within one network call: a forward pre-hook on a model's network raises
:class:`~src_models.sampling.sampler.Cancelled` when the calling thread's cancel token is set.  The
token is per thread, so runs on other canvases that share the loaded model go on.  The sampler
itself checks the token between levels; this hook stops it inside a level too."""
from __future__ import annotations

import threading
from contextlib import contextmanager

_TLS = threading.local()  # per thread: the cancel token its run checks before every network call


def _stop_if_cancelled(module, args) -> None:
    cancel = getattr(_TLS, "cancel", None)
    if cancel is not None and cancel.is_set():
        from src_models.sampling.sampler import Cancelled

        raise Cancelled()


def hook_network(net) -> None:
    """Once per network: it checks the calling thread's token before each call."""
    if not getattr(net, "_diffinfinite_cancel_hook", False):
        net.register_forward_pre_hook(_stop_if_cancelled)
        net._diffinfinite_cancel_hook = True


def stop_on_cancel(model) -> None:
    """Once per loaded model: its networks (the UNet, and its distilled student once built) check the
    calling thread's token before each call."""
    hook_network(model.unet)
    student = model.__dict__.get("_guided")
    if student is not None:
        hook_network(student)


def set_cancel_token(cancel) -> None:
    """From now on this thread's network calls stop once ``cancel`` (a ``threading.Event``) is set;
    ``None`` ends that."""
    _TLS.cancel = cancel


@contextmanager
def cancel_token(cancel):
    """:func:`set_cancel_token` for the length of a block."""
    set_cancel_token(cancel)
    try:
        yield
    finally:
        set_cancel_token(None)
