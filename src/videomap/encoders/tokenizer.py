"""A byte-level tokenizer that needs no files: the default text side of the video-LLM path offline.

Token ids: 0 = pad, 1 = begin of sequence, 2 = end of sequence, ``3 + b`` = UTF-8 byte ``b``. It offers the
part of a ``transformers`` tokenizer the video-LLM code uses (``encode``, ``decode``, the special ids,
``len``), so a real tokenizer (``AutoTokenizer``) drops in unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable


class ByteTokenizer:
    """UTF-8 bytes as tokens, plus pad / bos / eos."""

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2
    offset = 3
    special_tokens = {0: "<pad>", 1: "<s>", 2: "</s>"}

    @property
    def vocab_size(self) -> int:
        return self.offset + 256

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """``text`` → ids; ``add_special_tokens`` prepends the begin-of-sequence id."""
        ids = [self.offset + b for b in text.encode("utf-8")]
        return [self.bos_token_id] + ids if add_special_tokens else ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """ids → text (invalid UTF-8 becomes U+FFFD)."""
        out, pending = [], bytearray()
        for i in (int(i) for i in ids):
            if i >= self.offset:
                pending.append(min(i - self.offset, 255))
                continue
            if not skip_special_tokens:
                out.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
                out.append(self.special_tokens.get(i, f"<{i}>"))
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)
