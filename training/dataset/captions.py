"""Caption files: decoding odd encodings, defaults and trigger words."""

from __future__ import annotations

import codecs
from pathlib import Path

_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_caption_bytes(data: bytes) -> tuple[str, str | None]:
    """Decode caption bytes: a BOM (utf-8-sig, utf-16, utf-32), BOM-less UTF-16, utf-8, then latin-1.

    Returns:
        ``(text, note)``; ``note`` says which fallback was used when it was not plain utf-8.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding), None
            except UnicodeDecodeError:
                break
    if b"\x00" in data and len(data) % 2 == 0:
        encoding = "utf-16-le" if data[1::2].count(0) > data[0::2].count(0) else "utf-16-be"
        try:
            return data.decode(encoding), f"caption has no BOM but looks like {encoding.upper()}; read as such"
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return data.decode("latin-1"), "caption is not valid UTF-8; read as Latin-1"


def read_caption(path: Path) -> tuple[str | None, str | None]:
    """Read a caption file; ``(None, None)`` if it does not exist.

    Returns:
        ``(text, note)`` with surrounding whitespace stripped; ``note`` explains fallbacks or a
        read failure (then ``text`` is ``None``).
    """
    if not path.is_file():
        return None, None
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"caption unreadable ({exc.strerror or exc}); default caption used"
    text, note = decode_caption_bytes(data)
    return text.replace("\x00", "").strip(), note


def finalize_caption(text: str | None, default_caption: str, trigger_word: str) -> str:
    """Apply the default caption (when there is none) and prefix the trigger word once."""
    caption = text if text else default_caption.strip()
    trigger = trigger_word.strip()
    if trigger and not caption.startswith(trigger):
        caption = f"{trigger}, {caption}" if caption else trigger
    return caption
