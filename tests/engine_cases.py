"""Random adapter factors for engine tests: every algorithm × layer kind, seeded."""

from __future__ import annotations

import torch

from hadakron.adapters import LoHaWeights, LoKrWeights, LoRAWeights

# name -> weight shape of the target layer
LAYERS = {
    "linear": (96, 80),
    "conv1d": (24, 12, 3),
    "conv2d": (24, 12, 3, 3),
    "conv3d": (16, 8, 3, 3, 3),
}


def rand(*shape, gen):
    return torch.randn(*shape, generator=gen) * 0.3


def lora_case(shape, rank=4, tucker=False, gen=None) -> LoRAWeights:
    out, inp, kernel = shape[0], shape[1], tuple(shape[2:])
    ones = (1,) * len(kernel)
    if tucker and kernel:
        return LoRAWeights(
            up=rand(out, rank, *ones, gen=gen),
            down=rand(rank, inp, *ones, gen=gen),
            mid=rand(rank, rank, *kernel, gen=gen),
        )
    return LoRAWeights(up=rand(out, rank, *ones, gen=gen), down=rand(rank, inp, *kernel, gen=gen))


def loha_case(shape, rank=4, tucker=False, gen=None) -> LoHaWeights:
    out, inp, kernel = shape[0], shape[1], tuple(shape[2:])
    if tucker and kernel:
        return LoHaWeights(
            w1a=rand(rank, out, gen=gen),
            w1b=rand(rank, inp, gen=gen),
            w2a=rand(rank, out, gen=gen),
            w2b=rand(rank, inp, gen=gen),
            t1=rand(rank, rank, *kernel, gen=gen),
            t2=rand(rank, rank, *kernel, gen=gen),
        )
    cols = inp * int(torch.tensor(kernel).prod()) if kernel else inp
    return LoHaWeights(
        w1a=rand(out, rank, gen=gen),
        w1b=rand(rank, cols, gen=gen),
        w2a=rand(out, rank, gen=gen),
        w2b=rand(rank, cols, gen=gen),
    )


def lokr_case(shape, variant="lowrank", rank=3, gen=None) -> LoKrWeights:
    """variant: full | lowrank | both | tucker | w1lowrank."""
    from hadakron.adapters import lokr_shapes

    out, inp, kernel = shape[0], shape[1], tuple(shape[2:])
    (out_l, in_m), (out_k, in_n) = lokr_shapes(out, inp, -1)
    w = LoKrWeights()
    if variant in ("both", "w1lowrank"):
        w.w1a, w.w1b = rand(out_l, rank, gen=gen), rand(rank, in_m, gen=gen)
    else:
        w.w1 = rand(out_l, in_m, gen=gen)
    cols = in_n * (int(torch.tensor(kernel).prod()) if kernel else 1)
    if variant in ("full", "w1lowrank"):
        w.w2 = rand(out_k, in_n, *kernel, gen=gen)
    elif variant == "tucker" and kernel:
        w.w2a, w.w2b, w.t2 = rand(rank, out_k, gen=gen), rand(rank, in_n, gen=gen), rand(rank, rank, *kernel, gen=gen)
    else:
        w.w2a, w.w2b = rand(out_k, rank, gen=gen), rand(rank, cols, gen=gen)
    return w


def lokr_closed_form(w: LoKrWeights, shape) -> torch.Tensor:
    """ΔW[i·out_k+p, j·in_n+q, …] = w1[i,j]·w2[p,q,…] by explicit loops over w1 (reference)."""
    w1 = w.w1 if w.w1 is not None else w.w1a @ w.w1b
    kernel = tuple(shape[2:])
    if w.w2 is not None:
        w2 = w.w2
    elif w.t2 is not None:
        w2 = torch.einsum("ijk...,ip,jr->prk...", w.t2.reshape(*w.t2.shape[:2], -1), w.w2a, w.w2b)
        w2 = w2.reshape(w2.shape[0], w2.shape[1], *kernel)
    else:
        w2 = (w.w2a @ w.w2b).reshape(w.w2a.shape[0], -1, *kernel)
    out_k, in_n = w2.shape[0], w2.shape[1]
    result = torch.zeros(shape)
    for i in range(w1.shape[0]):
        for j in range(w1.shape[1]):
            result[i * out_k : (i + 1) * out_k, j * in_n : (j + 1) * in_n] = w1[i, j] * w2
    return result
