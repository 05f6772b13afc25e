"""Text in, text out: a prompt is encoded, the model decodes token by token from its
recurrent state (model.stream), and the text is yielded as soon as it is whole UTF-8.
A document read once (read_document) gives a state that later prompts continue from."""

import torch

from .errors import UserError
from .model import PREFILL_CHUNK


def read_document(model, tokenizer, text: str, prefill_chunk: int | None = PREFILL_CHUNK, device="cpu"):
    """Read `text` once: -> (the model's state after it, its number of tokens)."""
    ids = tokenizer.encode(text)
    if not ids:
        raise UserError("the document is empty: nothing to read")
    _, state = model.prefill(torch.tensor([ids], device=device), chunk_size=prefill_chunk)
    return state, len(ids)


def stream_text(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k=None,
    top_p=None,
    seed: int | None = None,
    device="cpu",
    state=None,
    prefill_chunk: int | None = PREFILL_CHUNK,
):
    """Yield pieces of generated text; an empty prompt starts a new document. With `state` (a
    document's, see read_document and wavefield.states) the prompt continues that document."""
    ids = tokenizer.encode(prompt)
    if state is not None and not ids:
        raise UserError("a prompt is needed to answer from a document's state")
    ids = ids or [tokenizer.eos_id]
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    new, shown = [], ""
    tokens = model.stream(torch.tensor([ids], device=device), max_new_tokens, temperature, top_k, top_p, generator, state=state, prefill_chunk=prefill_chunk)
    for token in tokens:
        new.append(token.item())
        text = tokenizer.decode(new)
        if not text.endswith("\ufffd"):  # else a multi-byte character may still be incomplete
            yield text[len(shown) :]
            shown = text
    if new and len(text) > len(shown):  # bytes that never became a character
        yield text[len(shown) :]
