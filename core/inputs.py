"""What a text looks like to the model, for telling a person when an answer says little about their input.

The demo and the command line both use these: ``has_visible_text`` refuses texts made only of
invisible characters (zero-width spaces, byte-order marks, ...), which pass ``str.strip`` but
give the model nothing to read; ``reading_notes`` says when what remains is mostly unknown to
the model's vocabulary, has no letters or digits at all, or is mostly in a script other than
the Latin one the (English) models were trained on.
"""

from __future__ import annotations

import unicodedata

from transformers import PreTrainedTokenizerBase

INVISIBLE_CATEGORIES = {
    "Cc",
    "Cf",
    "Zs",
    "Zl",
    "Zp",
    "Cn",
    "Co",
    "Cs",
}  # controls, format (zero-width), separators, unassigned
MOSTLY = 0.5  # more than half of the word pieces or letters


def has_visible_text(text: str) -> bool:
    """True when the text has at least one visible character.

    Whitespace and invisible characters (zero-width, format, control) do not count.
    """
    return any(
        not character.isspace() and unicodedata.category(character) not in INVISIBLE_CATEGORIES for character in text
    )


def _is_latin(character: str) -> bool:
    return unicodedata.name(character, "").startswith("LATIN")


def reading_notes(tokenizer: PreTrainedTokenizerBase, text: str, name: str) -> list[str]:
    """Notes on how little of ``text`` the model can read (empty when it reads normally); ``name`` says which text."""
    if not any(character.isalnum() for character in text):
        return [
            f"{name}: has no letters or digits, only punctuation, symbols or emoji, so the answer says little "
            "about it."
        ]
    pieces = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    unknown = sum(piece == tokenizer.unk_token_id for piece in pieces) if tokenizer.unk_token_id is not None else 0
    if pieces and unknown / len(pieces) > MOSTLY:
        return [
            f"{name}: most of it ({unknown} of {len(pieces)} word pieces) is unknown to the model's "
            "vocabulary ([UNK]: emoji, or characters "
            "it was never trained on), so the answer says little about it."
        ]
    letters = [character for character in text if character.isalpha()]
    foreign = sum(not _is_latin(character) for character in letters)
    if letters and foreign / len(letters) > MOSTLY:
        return [
            f"{name}: most of its letters ({foreign} of {len(letters)}) are not in the Latin script; the "
            "models were trained on English, "
            "so they read it letter by letter and the answer says little about it."
        ]
    return []
