"""Shared fixtures: a tiny random BERT saved as a backbone folder, and models built on it."""

from __future__ import annotations

import pytest
import torch

from core.methods import get_method
from core.model import AdaptiveModel, build_model
from tests.tiny import save_tiny_backbone

SENTENCES = [
    "a gorgeous, witty, seductive movie.",
    "the plot is nothing but boilerplate clichés from start to finish , and the script is inane",
    "bad",
    "it 's a charming and often affecting journey .",
    "unflinchingly bleak and desperate",
    "the acting , costumes , music , cinematography and sound are all astounding given the production 's "
    "austere locales .",
    "an utterly incompetent conclusion",
    "i liked it",
]
SECOND = [
    "the film is charming.",
    "the script is bad",
    "good",
    "a journey",
    "hopeful and bright and full of joy and laughter everywhere",
    "the production is austere",
    "a competent ending",
    "i did not like it at all",
]


torch.set_num_threads(1)  # tests share two cores with training runs; one thread each avoids oversubscription


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"), num_layers=4)


def randomise(model: AdaptiveModel, seed: int, scale: float = 1.0) -> AdaptiveModel:
    """Give the method's heads varied random weights so different inputs take different paths."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.method.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return model.eval()


@pytest.fixture
def make_model(tiny_backbone):
    def make(method: str, task: str = "MRPC", **settings) -> AdaptiveModel:
        torch.manual_seed(0)
        config = get_method(method).Config.from_dict(settings)
        return build_model(method, task, backbone=tiny_backbone, method_config=config).eval()

    return make
