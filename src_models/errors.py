"""The one base class of every error the core raises for input it cannot use.

A :class:`DiffInfiniteError`'s message is written for the user: one line that says what is wrong
and how to fix it.  Every interface handles them in one place (the CLI's
:func:`src_models.cli.common.run_command`, the napari worker's ``Failed`` event): the message is
shown as it is, without a traceback, and the command exits with status 2.  Anything else is a bug
and keeps its traceback.

The error classes stay in the modules that raise them (``CanvasError`` in the store, ``MaskError``
with the mask readers, ...) and keep their second base (``ValueError`` or ``RuntimeError``), so
code that catches those still does.
"""
from __future__ import annotations


class DiffInfiniteError(Exception):
    """Input the core cannot use; the message says why and how to fix it."""
