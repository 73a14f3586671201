"""Importing peft and diffusers without bitsandbytes, which only quantized backbones need.

peft and diffusers import bitsandbytes whenever it is installed, and importing it is not free: on CPUs with
AVX512-BF16 its CPU backend asks the Hugging Face kernel hub (a network request) for an optional 4-bit kernel
and logs a warning about ``trust_remote_code`` when that fails, in every command. None of these libraries has a
switch against it, so this module imports them, and runs peft's LoRA injection (which imports bitsandbytes'
layers when it is available), with bitsandbytes hidden.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["without_bitsandbytes"]

_NAME = "bitsandbytes"
# Availability checks of the libraries that are cached (functools caches): cleared on entering and on leaving
# the block, so neither the hidden state nor a stale answer outlives it.
_CACHED_CHECKS = (
    ("peft.import_utils", ("is_bnb_available", "is_bnb_4bit_available")),
    ("transformers.utils.import_utils", ("is_bitsandbytes_available",)),
)


def _forget_cached_checks() -> None:
    for module_name, names in _CACHED_CHECKS:
        module = sys.modules.get(module_name)
        for name in names:
            clear = getattr(getattr(module, name, None), "cache_clear", None)
            if clear is not None:
                clear()


@contextmanager
def without_bitsandbytes() -> Iterator[None]:
    """Inside the block ``import bitsandbytes`` fails and ``importlib.util.find_spec`` finds nothing, as if it
    were not installed (``sys.modules[name] = None``, Python's documented way to block an import).

    Nothing changes once bitsandbytes is imported: a quantized backbone imports it through transformers, before
    its LoRA adapter is injected, so QLoRA keeps working in the same process. After the block bitsandbytes is
    importable again. One lasting effect: diffusers, when first imported inside the block, treats bitsandbytes
    as missing for the rest of the process (this project never quantizes FLUX through diffusers).
    """
    if _NAME in sys.modules:  # imported already (nothing left to avoid), or hidden by an enclosing block
        yield
        return
    sys.modules[_NAME] = None  # type: ignore[assignment]
    _forget_cached_checks()
    try:
        yield
    finally:
        if _NAME in sys.modules and sys.modules[_NAME] is None:
            del sys.modules[_NAME]
        _forget_cached_checks()
