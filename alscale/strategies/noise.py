"""Counter-based randomness: every random number is a pure function of (seed, round, row_id).

DESIGN §1.2: sharding never changes an answer, so no draw may depend on global RNG state,
on which array a row sits in, or on scheduling order. Each row's value is a hash of its
keys: the (seed, round) pair is hashed once into a 64-bit stream key, and row ``r`` gets

    z = mix64(key + (r + 1) * GOLDEN)          (mod 2**64)

— the SplitMix64 generator (Steele, Lea & Flood, "Fast Splittable Pseudorandom Number
Generators", OOPSLA 2014) evaluated at counter ``r`` of the stream ``key``, with
``mix64`` the MurmurHash3-style finaliser with Stafford's "Mix13" constants. All of it is
vectorised uint64 numpy arithmetic that wraps modulo 2**64 by design.

The same (seed, round, row_id) gives the same value in any array, of any integer dtype,
in any order, on any machine.
"""

from __future__ import annotations

import numpy as np

from alscale.errors import AlscaleError, short_repr

__all__ = ["keyed_gumbel", "keyed_uniform"]

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / golden ratio, odd: the SplitMix64 increment
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
# Domain separators so that (seed, round) = (a, b) and (b, a) give unrelated streams.
_SEED_SALT = 0x5EED5EED5EED5EED
_ROUND_SALT = 0x0D0D0D0D2B2B2B2B
# u = (k + 0.5) / 2**52 for the top 52 bits k: every value is an exact double, strictly
# inside (0, 1), and the set of values is symmetric about 1/2. (With 53 bits the top
# value (2**53 - 0.5) / 2**53 is not representable and rounds to 1.0.)
_BITS = 52


def _mix64_int(z: int) -> int:
    """The SplitMix64 finaliser on a Python int (for the scalar keys)."""
    z &= _MASK
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK
    return z ^ (z >> 31)


def _mix64(z_N: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser on a uint64 array (in place; returns it)."""
    z_N ^= z_N >> np.uint64(30)
    z_N *= np.uint64(_MIX1)
    z_N ^= z_N >> np.uint64(27)
    z_N *= np.uint64(_MIX2)
    z_N ^= z_N >> np.uint64(31)
    return z_N


def _stream_key(seed: int, round: int) -> int:
    """64-bit key of the (seed, round) stream."""
    k = _mix64_int((seed & _MASK) ^ _SEED_SALT)
    return _mix64_int((k + _mix64_int((round & _MASK) ^ _ROUND_SALT)) & _MASK)


def _check_key(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise AlscaleError(f"{name} must be an integer; got {short_repr(value)}")
    return int(value)


def _row_ids_u64(row_ids_N: object) -> np.ndarray:
    """Validate row ids and return them as uint64 (two's complement for negatives)."""
    if not isinstance(row_ids_N, np.ndarray):
        raise AlscaleError(f"row_ids must be a 1-D numpy integer array; got {type(row_ids_N).__name__}")
    if row_ids_N.ndim != 1:
        raise AlscaleError(f"row_ids must be 1-D [N]; got shape {row_ids_N.shape}")
    if row_ids_N.dtype == np.bool_ or not np.issubdtype(row_ids_N.dtype, np.integer):
        raise AlscaleError(f"row_ids must be integers (int64 row_id values); got dtype {row_ids_N.dtype}")
    if np.issubdtype(row_ids_N.dtype, np.unsignedinteger):
        return row_ids_N.astype(np.uint64)
    return row_ids_N.astype(np.int64).view(np.uint64)


def _bits(seed: int, round: int, row_ids_N: np.ndarray) -> np.ndarray:
    """64 well-mixed bits per row: uint64 ``[N]``."""
    key = _stream_key(seed, round)
    z_N = _row_ids_u64(row_ids_N)  # a fresh array: astype copies
    with np.errstate(over="ignore"):
        z_N += np.uint64(1)
        z_N *= np.uint64(_GOLDEN)
        z_N += np.uint64(key)
        return _mix64(z_N)


def _unit_from_bits(bits_N: np.ndarray) -> np.ndarray:
    """Top 52 bits k -> (k + 0.5) / 2**52: exact doubles in the open interval (0, 1)."""
    k_N = (bits_N >> np.uint64(64 - _BITS)).astype(np.float64)
    return (k_N + 0.5) * (1.0 / (1 << _BITS))


def keyed_uniform(seed: int, round: int, row_ids_N: np.ndarray) -> np.ndarray:
    """Uniform(0, 1) noise per row, a pure function of (seed, round, row_id).

    Args:
        seed: the job's root seed (any int; taken modulo 2**64).
        round: the acquisition round (any int; taken modulo 2**64).
        row_ids_N: the rows' ``row_id`` values, 1-D, any integer dtype.

    Returns:
        float64 ``[N]`` strictly inside (0, 1), on the grid ``(k + 0.5) / 2**52``.
    """
    seed = _check_key("seed", seed)
    round = _check_key("round", round)
    return _unit_from_bits(_bits(seed, round, row_ids_N))


def keyed_gumbel(seed: int, round: int, row_ids_N: np.ndarray) -> np.ndarray:
    """Standard Gumbel noise ``-log(-log u)`` per row, ``u = keyed_uniform(seed, round, row_ids_N)``.

    Finite (|g| < 40) because u is strictly inside (0, 1). Adding it to log-weights and
    taking the top B is a draw of B rows without replacement (Gumbel-top-k; Kool, van Hoof
    & Welling, ICML 2019). Returns float64 ``[N]``.
    """
    u_N = keyed_uniform(seed, round, row_ids_N)
    return -np.log(-np.log(u_N))
