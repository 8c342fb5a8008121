"""The LyCORIS LoKr factorization (formats.md §5) used when creating LoKr for training."""

from __future__ import annotations


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dimension`` into ``(m, n)`` with ``m·n = dimension`` and ``m <= n``.

    Args:
        dimension: a layer's in or out size.
        factor: ``-1`` for the divisor pair closest to √dim; a dividing factor gives
            ``(min(f, dim/f), max(…))``; a non-dividing one the largest divisor ``<= factor``.

    Examples:
        >>> factorization(3072)
        (48, 64)
        >>> factorization(3072, 16)
        (16, 192)
        >>> factorization(5120, 12)
        (10, 512)
    """
    if factor > 0 and dimension % factor == 0:
        m, n = factor, dimension // factor
        return (m, n) if m <= n else (n, m)
    bound = dimension if factor < 0 else factor
    m, n = 1, dimension
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        if new_m > bound:
            break
        m, n = new_m, dimension // new_m
    return (m, n) if m <= n else (n, m)


def lokr_shapes(
    out_dim: int, in_dim: int, factor: int = -1, unbalanced: bool = False
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Return ``((out_l, in_m), (out_k, in_n))``: w1 takes the smaller factors (LyCORIS layout).

    ``unbalanced`` swaps the output pair so w1 gets the larger output factor.
    """
    in_m, in_n = factorization(in_dim, factor)
    out_l, out_k = factorization(out_dim, factor)
    if unbalanced:
        out_l, out_k = out_k, out_l
    return (out_l, in_m), (out_k, in_n)
