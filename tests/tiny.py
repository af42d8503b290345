"""A small random BERT for tests and smoke runs: test scaffolding, kept out of the engine."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BertConfig, BertModel

from core.backbone import DEFAULT_BACKBONE, load_tokenizer


def tiny_bert_config(num_layers: int = 4, hidden_size: int = 32, vocab_size: int = 30522) -> BertConfig:
    """A few layers of width 32 with MiniLM's vocabulary, so MiniLM's tokenizer fits."""
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=128,
    )


def save_tiny_backbone(folder: str | Path, num_layers: int = 4, seed: int = 0) -> str:
    """Write a random tiny BERT plus MiniLM's tokenizer to ``folder``; return the folder as a backbone reference."""
    torch.manual_seed(seed)
    folder = Path(folder)
    BertModel(tiny_bert_config(num_layers)).save_pretrained(folder)
    load_tokenizer(DEFAULT_BACKBONE).save_pretrained(folder)
    return str(folder)
