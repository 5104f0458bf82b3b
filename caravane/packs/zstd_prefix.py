"""zstd compression with a *prefix* (``ZSTD_CCtx_refPrefix``), as ``zstd --patch-from`` does.

python-zstandard loads a raw-content dictionary in a way that long-distance matching never
sees, which made deltas against a multi-megabyte base about 1.8x larger than the zstd command
line's. libzstd's prefix API, called through ctypes, gives the command line's result. Only the
builder needs it: a frame made this way decompresses with python-zstandard, the base passed
as a raw-content dictionary. When the system libzstd is missing, the builder falls back to
python-zstandard (correct, just larger).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Any

import zstandard as zstd

_C_LEVEL = 100
_C_WINDOW_LOG = 101
_C_HASH_LOG = 102
_C_CHAIN_LOG = 103
_C_LDM = 160
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_loaded = False


def _load() -> ctypes.CDLL | None:
    global _lib, _loaded
    with _lock:
        if _loaded:
            return _lib
        _loaded = True
        name = ctypes.util.find_library("zstd")
        if not name:
            return None
        try:
            lib = ctypes.CDLL(name)
            lib.ZSTD_versionNumber.restype = ctypes.c_uint
            if lib.ZSTD_versionNumber() < 10405:
                return None
            lib.ZSTD_createCCtx.restype = ctypes.c_void_p
            lib.ZSTD_freeCCtx.argtypes = [ctypes.c_void_p]
            lib.ZSTD_CCtx_setParameter.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
            lib.ZSTD_CCtx_setParameter.restype = ctypes.c_size_t
            lib.ZSTD_CCtx_refPrefix.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
            lib.ZSTD_CCtx_refPrefix.restype = ctypes.c_size_t
            lib.ZSTD_compress2.argtypes = [
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_size_t,
                ctypes.c_void_p,
                ctypes.c_size_t,
            ]
            lib.ZSTD_compress2.restype = ctypes.c_size_t
            lib.ZSTD_compressBound.argtypes = [ctypes.c_size_t]
            lib.ZSTD_compressBound.restype = ctypes.c_size_t
            lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
            lib.ZSTD_isError.restype = ctypes.c_uint
        except (OSError, AttributeError):
            return None
        _lib = lib
        return lib


def available() -> bool:
    return _load() is not None


def _pointer(buf: bytes | bytearray) -> Any:
    """What ctypes passes as the buffer's address (a bytearray is not copied)."""
    if isinstance(buf, bytearray):
        return (ctypes.c_char * len(buf)).from_buffer(buf) if buf else None
    return buf


def compress_with_prefix(
    prefix: bytes | bytearray,
    data: bytes | bytearray,
    level: int,
    window_log: int,
    chain_log: int = 0,
) -> bytes:
    """One zstd frame of ``data`` that may refer back into ``prefix`` (long matching on).

    ``chain_log``: when set, the match finder's table of earlier positions (the largest
    part of a strong level's memory: 64 MiB at level 19) is that size instead of the
    level's, and its table of hash heads one eighth of it (16 MiB at level 19)."""
    lib = _load()
    if lib is None:
        extra = {"chain_log": chain_log, "hash_log": chain_log - 2} if chain_log else {}
        params = zstd.ZstdCompressionParameters.from_level(
            level, window_log=window_log, enable_ldm=True, write_content_size=True, **extra
        )
        kwargs: dict[str, Any] = {"compression_params": params}
        if prefix:
            kwargs["dict_data"] = zstd.ZstdCompressionDict(
                bytes(prefix), dict_type=zstd.DICT_TYPE_RAWCONTENT
            )
        return zstd.ZstdCompressor(**kwargs).compress(data)
    cctx = lib.ZSTD_createCCtx()
    if not cctx:
        raise MemoryError("zstd: cannot create a compression context")
    try:
        settings = [(_C_LEVEL, level), (_C_WINDOW_LOG, window_log), (_C_LDM, 1)]
        if chain_log:
            settings += [(_C_CHAIN_LOG, chain_log), (_C_HASH_LOG, chain_log - 2)]
        for param, value in settings:
            if lib.ZSTD_isError(lib.ZSTD_CCtx_setParameter(cctx, param, value)):
                raise ValueError(f"zstd: parameter {param}={value} refused")
        if prefix and lib.ZSTD_isError(
            lib.ZSTD_CCtx_refPrefix(cctx, _pointer(prefix), len(prefix))
        ):
            raise ValueError("zstd: prefix refused")
        cap = lib.ZSTD_compressBound(len(data))
        out = ctypes.create_string_buffer(cap)
        n = lib.ZSTD_compress2(cctx, out, cap, _pointer(data), len(data))
        if lib.ZSTD_isError(n):
            raise ValueError("zstd: compression failed")
        return ctypes.string_at(out, n)  # not out.raw[:n]: that copies the whole buffer first
    finally:
        lib.ZSTD_freeCCtx(cctx)
