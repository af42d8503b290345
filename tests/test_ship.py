"""The recipe runner: recipe files become training runs, finished stages are skipped, a choice follows validation."""

from __future__ import annotations

import json

import pytest

from core.errors import UserError
from tests.test_training import glue_dir  # noqa: F401  (a fixture)
from training import ship

RECIPE = """
task = "MRPC"

[[stage]]
name = "full-{{pooling}}"
method = "full"
choose = {{ pooling = ["mean", "cls"] }}
as = "full"
{common}

[[stage]]
name = "deebert"
method = "deebert"
init = "full"
{common}
"""


def write_recipe(folder, backbone: str, data_dir) -> None:
    folder.mkdir()
    common = (
        f'backbone = "{backbone}"\ndata_dir = "{data_dir}"\nmax_steps = 1\nbatch_size = 4\neval_limit = '
        "4\nmax_length = 32"
    )
    (folder / "mrpc.toml").write_text(RECIPE.format(common=common))


def test_recipe_trains_every_stage_links_the_chosen_variant_and_skips_finished_ones(
    tiny_backbone,
    glue_dir,  # noqa: F811
    tmp_path,
    capsys,
):
    recipes, runs = tmp_path / "recipes", tmp_path / "runs"
    write_recipe(recipes, tiny_backbone, glue_dir)
    argv = ["--task", "MRPC", "--runs", str(runs), "--recipes", str(recipes), "--no-publish"]
    assert ship.main(argv) == 0
    run = runs / "mrpc"
    for folder in ("full-mean", "full-cls", "deebert"):
        assert (run / folder / "config.json").is_file()
    assert (run / "full").is_symlink() and (run / "full").resolve().name in ("full-mean", "full-cls")
    poolings = {
        folder: json.loads((run / folder / "config.json").read_text())["method_config"]["pooling"]
        for folder in ("full-mean", "full-cls")
    }
    assert poolings == {"full-mean": "mean", "full-cls": "cls"}
    chosen = json.loads((run / "full" / "config.json").read_text())["method_config"]["pooling"]
    deebert = json.loads((run / "deebert" / "config.json").read_text())
    assert deebert["method_config"]["pooling"] == chosen, "a stage built on the chosen full model reads what it read"
    assert deebert["training"]["lr"] == 1e-3 and deebert["training"]["epochs"] == 2.0, (
        "settings a recipe leaves out are the stage's own"
    )
    capsys.readouterr()
    assert ship.main([*argv, "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert listed.count("[done]") == 3 and "[to train]" not in listed and "--init" in listed


def test_a_bad_recipe_names_the_file_and_the_stage(tmp_path):
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "mrpc.toml").write_text('task = "MRPC"\n[[stage]]\nname = "x"\nmethod = "nonsense"\n')
    with pytest.raises(UserError, match=r"mrpc\.toml stage 1: unknown method"):
        ship.recipes(None, folder)
    (folder / "mrpc.toml").write_text(
        'task = "MRPC"\n[[stage]]\nname = "x"\nmethod = "dact"\nsweep = {tau = [0.1]}\nchoose = {tau = [0.2]}\n'
    )
    with pytest.raises(UserError, match="not both"):
        ship.recipes(None, folder)
    (folder / "mrpc.toml").write_text('task = "MRPC"\n[[stage]]\nname = "full"\nmethod = "full"\n')
    with pytest.raises(UserError, match="no recipe for RTE"):
        ship.recipes(["RTE"], tmp_path / "recipes")


def test_the_shipped_recipes_parse_and_build_on_earlier_stages():
    for recipe in ship.recipes(None):
        trained = set()
        for stage in recipe.stages + recipe.analysis_stages:
            for folder, settings in stage.variants():
                for key in ("init", "encoder_from"):
                    if key in settings:
                        wanted = settings[key]
                        assert wanted in trained, (
                            f"{recipe.path.name}: {folder} starts from {wanted}, which no earlier stage trains"
                        )
                trained.add(folder)
            if stage.chosen_as:
                trained.add(stage.chosen_as)


def test_choose_keeps_the_first_value_unless_another_is_better_by_more_than_the_margin(tmp_path):
    run = tmp_path / "mrpc"
    for folder, accuracy in (("full-mean", 0.766), ("full-cls", 0.790)):
        (run / folder).mkdir(parents=True)
        metrics = {"metric_name": "f1", "accuracy": accuracy, "f1": 0.85}
        (run / folder / "config.json").write_text(json.dumps({"training": {"validation_metrics": metrics}}))
    stage = ship.Stage("full-{pooling}", "full", "MRPC", {}, {"pooling": ["mean", "cls"]}, "full", margin=0.03)
    assert ship.choose_variant(stage, run).name == "full-mean", "0.024 better: within the margin"
    stage.margin = 0.01
    assert ship.choose_variant(stage, run).name == "full-cls" and (run / "full").resolve().name == "full-cls"
