"""Text in, text out: a prompt is encoded, the model decodes token by token from its
recurrent state (model.stream), and the text is yielded as soon as it is whole UTF-8."""

import torch


def stream_text(
    model, tokenizer, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8, top_k=None, top_p=None, seed: int | None = None, device="cpu"
):
    """Yield pieces of generated text; an empty prompt starts a new document."""
    ids = tokenizer.encode(prompt) or [tokenizer.eos_id]
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    new, shown = [], ""
    for token in model.stream(torch.tensor([ids], device=device), max_new_tokens, temperature, top_k, top_p, generator):
        new.append(token.item())
        text = tokenizer.decode(new)
        if not text.endswith("\ufffd"):  # else a multi-byte character may still be incomplete
            yield text[len(shown) :]
            shown = text
    if new and len(text) > len(shown):  # bytes that never became a character
        yield text[len(shown) :]
