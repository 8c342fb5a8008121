"""Caption conditioning: each distinct caption encoded once with the CLIP and cached on disk;
the empty caption (for caption dropout) and a callback for tag-shuffled variants."""

from __future__ import annotations

from collections import OrderedDict

import torch

from ..data import AdapterDataset
from .cache import DiskCache, make_key
from .encode import ClipEncoder
from .sources import Problems

VARIANT_MEMO_SIZE = 4096


def plain_conditioning(conditioning: list) -> list:
    """Copy a CONDITIONING so its tensors are normal (not inference-mode) CPU tensors."""
    with torch.inference_mode(False):
        out = []
        for cond, extras in conditioning:
            plain = {k: v.detach().to("cpu").clone() if isinstance(v, torch.Tensor) else v for k, v in extras.items()}
            out.append([cond.detach().to("cpu").clone(), plain])
        return out


class TextEncoding:
    """Fills ``conditioning`` of every item, ``empty_conditioning`` and ``encode_caption``."""

    def __init__(self, encoder: ClipEncoder | None, cache: DiskCache, stats: dict):
        self.encoder = encoder
        self.cache = cache if encoder is not None and encoder.identity else DiskCache(None)
        self.stats = stats

    def apply(self, dataset: AdapterDataset, problems: Problems, label: str) -> None:
        """Encode (or load) every distinct caption and attach the results to the dataset."""
        if self.encoder is None:
            if any(item.conditioning is None for item in dataset.items):
                problems.note(label, "no CLIP given: items carry captions but no conditioning")
            return
        if self.cache.root is None and self.encoder.identity is None:
            problems.note(label, "the CLIP's weights cannot be fingerprinted; conditioning is not cached")
        memo: dict[str, list] = {}
        for caption in [""] + [item.caption for item in dataset.items]:
            if caption not in memo:
                memo[caption] = self._conditioning(caption)
        for item in dataset.items:
            item.conditioning = memo[item.caption]
        dataset.empty_conditioning = memo[""]
        dataset.encode_caption = self._variant_encoder(memo)

    def _conditioning(self, caption: str) -> list:
        key = make_key("text", self.encoder.identity, caption)
        cached = self.cache.load_conditioning(key)
        if cached is not None:
            self.stats["text_cached"] = self.stats.get("text_cached", 0) + 1
            return plain_conditioning(cached)
        with torch.inference_mode():
            conditioning = plain_conditioning(self.encoder.encode(caption))
        self.cache.save_conditioning(key, conditioning, caption)
        self.stats["text_encoded"] = self.stats.get("text_encoded", 0) + 1
        return conditioning

    def _variant_encoder(self, known: dict[str, list]):
        encoder = self.encoder
        variants: OrderedDict[str, list] = OrderedDict()

        def encode_caption(text: str) -> list:
            """Conditioning for a caption variant (e.g. shuffled tags), encoded on first use."""
            if text in known:
                return known[text]
            if text not in variants:
                with torch.inference_mode():
                    variants[text] = plain_conditioning(encoder.encode(text))
                if len(variants) > VARIANT_MEMO_SIZE:
                    variants.popitem(last=False)
            return variants[text]

        return encode_caption
