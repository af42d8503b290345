"""Rebuild the shipped models from the recipe files: every stage of every task, then publish.

    python -m training.ship                      # every task in training/recipes/
    python -m training.ship --task MRPC --dry-run
    python -m training.ship --task MRPC --no-publish

A recipe (``training/recipes/<task>.toml``) lists its task's training stages in order. Each
``[[stage]]`` trains one checkpoint into ``runs/<task>/<name>`` with ``python -m training.train``;
its keys are that command's options without the dashes (``lr = 1e-4``), and what it leaves out
comes from the method's own stage settings and config defaults, which are what ships. ``init``
and ``encoder_from`` name earlier stages. A stage may train several variants:

- ``sweep = {tau = [...]}``: one checkpoint per value (``name`` holds ``{tau}``), all kept; publish
  chooses among them on the validation split (DACT's tau is its operating point);
- ``choose = {pooling = [...]}``: one per value, and ``runs/<task>/<as>`` then points at the one
  whose validation metrics are best (compared as the targets compare: MRPC by min(accuracy, F1)),
  the first value unless another beats it by more than ``margin`` (the validation split's noise).

A finished stage (its ``config.json`` exists) is skipped and an interrupted one resumes from its
saved state, so the same command continues after an interruption. Logs go to ``runs/logs/``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError, command_line
from core.methods import METHODS
from core.tasks import get_task, task_slug
from training.targets import compared_value

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
# what a recipe stage says about itself; every other key is a training.train option
STAGE_KEYS = {"name", "method", "stage", "task", "sweep", "choose", "as", "margin"}
PATH_OPTIONS = ("init", "encoder_from")  # stage names, resolved inside the task's run folder


@dataclass(frozen=True)
class Job:
    """One ``training.train`` run: its output folder and its command line."""

    out: Path
    argv: list[str]

    @property
    def done(self) -> bool:
        return (self.out / "config.json").is_file()

    @property
    def started(self) -> bool:
        return (self.out / "resume" / "position.json").is_file()

    def command(self) -> str:
        return "python -m training.train " + shlex.join(self.argv)


@dataclass
class Stage:
    """A recipe stage: its method and settings, and the variants it trains (one without ``sweep`` or ``choose``)."""

    name: str
    method: str
    task: str
    settings: dict
    grid: dict = field(default_factory=dict)  # option -> values (sweep or choose)
    chosen_as: str | None = None  # choose: the name the best variant is linked as
    margin: float = 0.0  # choose: how much better than the first value another must be on validation to be chosen

    def variants(self) -> list[tuple[str, dict]]:
        """(folder name, settings) per combination of the grid's values.

        The grid's values fill ``{option}`` in the stage's name and in the stages it starts from.
        """
        keys = list(self.grid)
        variants = []
        for values in itertools.product(*self.grid.values()):
            combo = dict(zip(keys, values))
            filled = {key: format_value(value) for key, value in combo.items()}
            settings = self.settings | combo
            settings |= {key: settings[key].format(**filled) for key in PATH_OPTIONS if key in settings}
            variants.append((self.name.format(**filled), settings))
        return variants


def format_value(value: object) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def option_arguments(settings: dict, run: Path) -> list[str]:
    """``{"lr": 1e-4, "freeze_embeddings": False}`` -> ``["--lr", "0.0001", "--no-freeze-embeddings"]``.

    Stage names become run folders.
    """
    argv = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
            continue
        if isinstance(value, (list, dict)):
            raise UserError(f"recipe setting {key} = {value!r}: give one value (a list belongs in sweep or choose)")
        argv += [flag, str(run / value) if key in PATH_OPTIONS else format_value(value)]
    return argv


@dataclass
class Recipe:
    """One task's recipe file: its ship stages and its analyses."""

    path: Path
    task: str
    stages: list[Stage]
    analysis_stages: list[Stage]
    analysis_commands: list[str]

    @property
    def slug(self) -> str:
        return task_slug(self.task)

    def jobs(self, stages: list[Stage], runs: Path) -> list[Job]:
        run = runs / self.slug
        jobs = []
        for stage in stages:
            for folder, settings in stage.variants():
                argv = [
                    "--method",
                    stage.method,
                    "--task",
                    stage.task,
                    *option_arguments(settings, run),
                    "--out",
                    str(run / folder),
                    "--resume",
                    "--quiet",
                ]
                jobs.append(Job(run / folder, argv))
        return jobs


def parse_stage(table: dict, task: str, where: str) -> Stage:
    if "method" not in table or "name" not in table:
        raise UserError(f"{where}: every stage needs a name and a method")
    if table["method"] not in METHODS:
        raise UserError(f"{where}: unknown method {table['method']!r}; choose one of {', '.join(METHODS)}")
    if "sweep" in table and "choose" in table:
        raise UserError(f"{where}: a stage either sweeps (keeps every variant) or chooses (keeps the best), not both")
    grid = table.get("sweep") or table.get("choose") or {}
    if "choose" in table and "as" not in table:
        raise UserError(f"{where}: a stage that chooses names what later stages call the chosen variant (as = ...)")
    settings = {key: value for key, value in table.items() if key not in STAGE_KEYS}
    if "stage" in table:
        settings["stage"] = table["stage"]
    task_name = get_task(table.get("task", task)).name
    margin = float(table.get("margin", 0.0))
    return Stage(table["name"], table["method"], task_name, settings, grid, table.get("as"), margin)


def load_recipe(path: Path) -> Recipe:
    """A recipe file, checked.

    Unknown methods, stage names and stage kinds are refused with the file and stage named.
    """
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path.name}: not valid TOML ({error})") from error
    if "task" not in data:
        raise UserError(f'{path.name}: say which task the recipe trains (task = "MRPC")')
    task = get_task(data["task"]).name
    stages = [
        parse_stage(table, task, f"{path.name} stage {number}")
        for number, table in enumerate(data.get("stage", []), start=1)
    ]
    analyses = data.get("analyses", {})
    extra = [
        parse_stage(table, task, f"{path.name} analyses stage {number}")
        for number, table in enumerate(analyses.get("stage", []), start=1)
    ]
    return Recipe(path, task, stages, extra, list(analyses.get("commands", [])))


def recipes(tasks: list[str] | None, folder: Path = RECIPES_DIR) -> list[Recipe]:
    found = [load_recipe(path) for path in sorted(folder.glob("*.toml"))]
    if not tasks:
        return found
    wanted = [get_task(task).name for task in tasks]
    missing = [task for task in wanted if task not in {recipe.task for recipe in found}]
    if missing:
        raise UserError(
            f"no recipe for {', '.join(missing)} in {folder.name}/; recipes exist for "
            f"{', '.join(recipe.task for recipe in found)}"
        )
    return [recipe for recipe in found if recipe.task in wanted]


def run_logged(argv: list[str], log: Path) -> None:
    """Run ``python -m <argv>`` with its output in ``log``; a failure names the log and shows its end."""
    log.parent.mkdir(parents=True, exist_ok=True)
    began = time.strftime("%H:%M:%S")
    print(f"{began} python -m {shlex.join(argv)}", flush=True)
    with log.open("w") as handle:
        finished = subprocess.run([sys.executable, "-m", *argv], stdout=handle, stderr=subprocess.STDOUT, check=False)
    lines = log.read_text().splitlines()
    if finished.returncode != 0:
        raise UserError(f"failed (exit {finished.returncode}); see {log}:\n" + "\n".join(lines[-5:]))
    if lines:
        print("  " + lines[-1][:240], flush=True)


def choose_variant(stage: Stage, run: Path) -> Path:
    """Point ``run/<as>`` at the variant with the best validation metrics; return the chosen folder.

    The first value listed is the default: another is chosen only when it beats the first by more
    than the stage's ``margin``, so a difference within the validation split's noise does not decide.
    """
    scored = []
    for folder, _ in stage.variants():
        metrics = json.loads((run / folder / "config.json").read_text())["training"].get("validation_metrics")
        if not metrics:
            raise UserError(
                f"{run / folder} has no validation metrics to choose by: train it on the fit split (the default)"
            )
        scored.append((compared_value(stage.task, metrics), folder))
    first_value, first = scored[0]
    best_value, best = max(scored)
    if best_value <= first_value + stage.margin:
        best = first
    link = run / stage.chosen_as
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise UserError(f"{link} is a folder, not the link to the chosen variant: move it away and rerun")
    link.symlink_to(best)
    print(
        f"  {stage.chosen_as} -> {best} (validation: "
        + ", ".join(f"{folder} {value:.4f}" for value, folder in scored)
        + ")",
        flush=True,
    )
    return run / best


def train_stages(recipe: Recipe, stages: list[Stage], runs: Path, dry_run: bool) -> None:
    run = runs / recipe.slug
    for stage in stages:
        for job in recipe.jobs([stage], runs):
            status = "done" if job.done else "resumes" if job.started else "to train"
            if dry_run or job.done:
                print(f"[{status}] {job.command()}", flush=True)
                continue
            run_logged(["training.train", *job.argv], runs / "logs" / f"{recipe.slug}-{job.out.name}.log")
        if stage.chosen_as and not dry_run:
            choose_variant(stage, run)
        elif stage.chosen_as:
            print(
                f"[choose] {stage.chosen_as} = the variant of {stage.name} with the best validation metrics",
                flush=True,
            )


def main_runner(description: str, prog: str, analyses: bool, argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", nargs="*", help="tasks to build (default: every recipe in training/recipes/)")
    parser.add_argument("--runs", default="runs", help="folder for the training outputs (default: %(default)s)")
    parser.add_argument(
        "--recipes", default=str(RECIPES_DIR), help="folder of recipe files (default: the shipped recipes)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list every stage with its command and whether it is done, run nothing"
    )
    if not analyses:
        parser.add_argument(
            "--no-publish", action="store_true", help="train only; do not choose operating points or write assets/"
        )
    args = parser.parse_args(argv)
    runs = Path(args.runs)
    chosen = recipes(args.task, Path(args.recipes))
    for recipe in chosen:
        print(f"# {recipe.task} ({recipe.path.name})", flush=True)
        train_stages(recipe, recipe.stages, runs, args.dry_run)
        if analyses:
            train_stages(recipe, recipe.analysis_stages, runs, args.dry_run)
            for command in recipe.analysis_commands:
                argv_command = expand_command(command, runs / recipe.slug, recipe.slug)
                if args.dry_run:
                    print(f"[analysis] python -m {shlex.join(argv_command)}", flush=True)
                else:
                    run_logged(
                        argv_command, runs / "logs" / f"{recipe.slug}-analysis-{argv_command[0].split('.')[-1]}.log"
                    )
    if not analyses and not args.no_publish:
        publish = ["training.publish", "--runs", str(runs), "--tasks", *[recipe.slug for recipe in chosen]]
        if args.dry_run:
            print(f"[publish] python -m {shlex.join(publish)}", flush=True)
        else:
            run_logged(publish, runs / "logs" / "publish.log")
    return 0


def expand_command(command: str, run: Path, slug: str) -> list[str]:
    """A recipe's analysis command: ``{run}`` and ``{slug}`` filled in, ``*`` patterns expanded to the run folders they
    match.
    """
    argv = []
    for token in shlex.split(command.format(run=run, slug=slug)):
        matches = sorted(Path(token).parent.glob(Path(token).name)) if "*" in token else []
        argv += [str(match) for match in matches] or [token]
    return argv


@command_line
def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return main_runner(__doc__, "python -m training.ship", analyses=False, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
