"""Train one stage of one method on one GLUE task, or on a task of one's own (a file or a ``datasets`` dataset).

    python -m training.train --method full --task MRPC --out runs/mrpc/full
    python -m training.train --method full --train-file reviews.csv --text-column review --label-column stars \\
        --out runs/reviews/full
    python -m training.train --method full --dataset imdb --text-column text --label-column label
    python -m training.train --method deebert --task MRPC --init runs/mrpc/full --out runs/mrpc/deebert
    python -m training.train --method dact --task MRPC --init runs/mrpc/full --tau 0.01
    python -m training.train --method dpbert --stage relaxed --task MRPC --init runs/mrpc/full \\
        --out runs/mrpc/dpbert-relaxed
    python -m training.train --method dpbert --stage rl --task MRPC --init runs/mrpc/dpbert-relaxed \\
        --out runs/mrpc/dpbert

Runs on the best device present (``--device``; bf16 autocast with --bf16), or as several processes under
``accelerate launch`` (several GPUs or machines; on CPUs: ``accelerate launch --multi_gpu --num_processes N``,
gloo): each process trains on its share of every epoch's batches, the first one saves the checkpoint.
An interrupted run continues from its last saved state with the same command plus --resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from datasets import Dataset
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from core.backbone import DEFAULT_BACKBONE
from core.checkpoint import save_checkpoint
from core.devices import AUTO, resolve_device
from core.errors import UserError, command_line
from core.methods import METHODS, MethodConfig
from core.tasks import TaskSpec, get_task
from training.data import (
    DEFAULT_DATA_DIR,
    VALIDATION,
    DataSource,
    carve_validation,
    check_task_name,
    load_own_data,
    load_split,
)
from training.evaluate import evaluate
from training.stages import TrainingObjective, starting_model, trainable_parameters


def option_flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def config_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, config_class: type[MethodConfig]
) -> None:
    """One option per field of a method's config (``--target-skip-rate``), from its type, choices and help."""
    for item in dataclasses.fields(config_class):
        flag = option_flag(item.name)
        meta = item.metadata
        help_text = f"{meta.get('help', '')} (default: {item.default})"
        if isinstance(item.default, bool):
            parser.add_argument(
                flag, dest=f"setting_{item.name}", action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(
                flag,
                dest=f"setting_{item.name}",
                type=type(item.default),
                choices=meta.get("choices"),
                default=None,
                help=help_text,
            )


def method_settings(args: argparse.Namespace) -> dict:
    """The method settings given on the command line (the rest keep their defaults)."""
    return {
        key.removeprefix("setting_"): value
        for key, value in vars(args).items()
        if key.startswith("setting_") and value is not None
    }


def add_switch(parser: argparse.ArgumentParser, flag: str, default: bool, help_text: str) -> None:
    """An on/off option with its ``--no-`` form."""
    parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    chosen = argparse.ArgumentParser(add_help=False)
    chosen.add_argument("--method", choices=list(METHODS))
    method_name = chosen.parse_known_args(argv)[0].method
    others = (
        ""
        if method_name
        else "Method settings (shown with --method M --help): "
        + "; ".join(
            f"{name}: " + ", ".join(option_flag(item.name) for item in dataclasses.fields(cls.Config))
            for name, cls in METHODS.items()
        )
    )
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description=__doc__,
        epilog=others,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--method", required=True, choices=list(METHODS))
    data = parser.add_argument_group("data: a GLUE --task, or a task of one's own from --train-file or --dataset")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="a GLUE task: SST-2, CoLA, MRPC, RTE, QNLI, WNLI or STS-B")
    source.add_argument(
        "--train-file", help="a CSV, TSV or JSON-lines file (format from the extension: .csv, .tsv, .jsonl, .json)"
    )
    source.add_argument(
        "--dataset", help="a Hugging Face datasets dataset: a hub name or a local folder (datasets.load_dataset)"
    )
    data.add_argument(
        "--dev-file",
        help="with --train-file: the rows to report on (default: rows held out of --train-file, recorded in "
        "config.json)",
    )
    data.add_argument("--dataset-config", help="with --dataset: its configuration (subset)")
    data.add_argument(
        "--dev-split",
        help="with --dataset: the split to report on (default: its validation split, else rows held out of train)",
    )
    data.add_argument("--text-column", help="the column holding the text (default: text)")
    data.add_argument("--pair-column", help="the column holding the second sentence, for a task on sentence pairs")
    data.add_argument(
        "--label-column",
        help="the column holding the class (names or whole numbers) or, with --regression, the score (default: label)",
    )
    data.add_argument(
        "--regression", action="store_true", help="learn a score from the label column instead of classes"
    )
    data.add_argument(
        "--task-name", help="the task's name in the checkpoint (default: the file's stem, or the dataset's name)"
    )
    stages = (
        [stage.name for stage in METHODS[method_name].stages]
        if method_name
        else sorted({stage.name for cls in METHODS.values() for stage in cls.stages})
    )
    parser.add_argument("--stage", choices=stages, help="training stage of the method's recipe (default: its first)")
    parser.add_argument(
        "--init", help="checkpoint to start from: the stage-1 full model, or the method's previous stage"
    )
    parser.add_argument("--out", help="output checkpoint folder (default runs/<task>/<method>)")
    data.add_argument(
        "--data-dir",
        default=str(DEFAULT_DATA_DIR),
        help="with --task: the glue_data folder (default: %(default)s; env GLUE_DIR)",
    )
    data.add_argument(
        "--from-hub",
        action="store_true",
        help="with --task: load GLUE from the Hugging Face hub instead of --data-dir",
    )
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument(
        "--finetune", choices=["lora", "full"], help="how the stage tunes the encoder (default: the stage's)"
    )
    add_switch(
        parser, "--freeze-embeddings", True, "with --finetune full: keep the embedding layer as published (default on)"
    )
    parser.add_argument(
        "--encoder-from",
        help="stage 1: start the encoder from this checkpoint's (any task: intermediate-task training) instead of "
        "the backbone",
    )
    parser.add_argument(
        "--train-split",
        default="fit",
        choices=["fit", "train", "dev"],
        help="rows to train on: fit = the training rows minus the held-out validation rows (default)",
    )
    parser.add_argument("--lora-rank", type=int)
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="learning rate (adapters and heads)")
    parser.add_argument(
        "--encoder-lr",
        type=float,
        help="learning rate of the encoder's own weights with --finetune full (default: the stage's, else --lr / 10)",
    )
    parser.add_argument("--warmup", type=float, help="fraction of steps for linear warm-up")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--train-limit", type=int, help="use only the first N training rows (smoke runs)")
    parser.add_argument("--eval-limit", type=int, help="evaluate on the first N dev rows")
    parser.add_argument("--seed", type=int, default=42)
    add_switch(
        parser, "--bf16", False, "bf16 autocast (default off: CPUs without native bf16 run it far slower than fp32)"
    )
    parser.add_argument(
        "--device",
        default=AUTO,
        choices=[AUTO, "cpu", "cuda", "mps"],
        help="where to train (default: the best available; under accelerate launch each process takes its own GPU)",
    )
    parser.add_argument("--save-every", type=int, default=200, help="save resumable state every N steps")
    parser.add_argument("--resume", action="store_true", help="continue from the state saved in --out/resume")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    if method_name:
        config_options(
            parser.add_argument_group(f"{METHODS[method_name].title} settings (recorded in config.json)"),
            METHODS[method_name].Config,
        )
    parser.epilog = (
        (parser.epilog or "")
        + "\nTraining settings not given come from the stage (core/methods/<method>.py, Stage.training), else: "
        + ", ".join(f"--{key.replace('_', '-')} {value}" for key, value in TRAINING_DEFAULTS.items())
    )
    return with_stage_defaults(parser.parse_args(argv))


TRAINING_DEFAULTS = {
    "finetune": "lora",
    "lora_rank": 16,
    "epochs": 3.0,
    "batch_size": 32,
    "lr": 5e-4,
    "encoder_lr": None,
    "warmup": 0.06,
}


def with_stage_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the training settings the command line left out from the stage's own (what ships), then from
    ``TRAINING_DEFAULTS``.
    """
    stage = METHODS[args.method].stage(args.stage)
    for key, default in TRAINING_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, stage.training.get(key, default))
    return args


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Random batches of similar lengths (little padding): shuffle, sort within chunks, shuffle batches."""
    generator = random.Random(seed)
    order = list(range(len(lengths)))
    generator.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        sorted_chunk = sorted(order[start : start + chunk], key=lengths.__getitem__)
        batches += [sorted_chunk[i : i + batch_size] for i in range(0, len(sorted_chunk), batch_size)]
    generator.shuffle(batches)
    return batches


def storable(tensor: torch.Tensor) -> torch.Tensor:
    """A detached contiguous copy safetensors can write (a 0-dim tensor as one element; load reshapes it back)."""
    return tensor.detach().reshape(-1).clone() if tensor.dim() == 0 else tensor.detach().contiguous().clone()


class ResumeState:
    """Trainable weights, the model's buffers, optimiser moments, scheduler and position, all in safetensors + JSON."""

    def __init__(self, folder: Path):
        self.folder = folder

    def save(self, parameters, buffers, optimizer, step: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"param.{i}": storable(p) for i, p in enumerate(parameters)} | {
            f"buffer.{i}": storable(b) for i, b in enumerate(buffers)
        }
        for i, p in enumerate(parameters):
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"optim.{i}.{key}"] = storable(value)
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, self.folder / "state.safetensors")
        (self.folder / "position.json").write_text(json.dumps({"step": step}))

    def load(self, parameters, buffers, optimizer) -> int:
        tensors = load_file(self.folder / "state.safetensors")
        with torch.no_grad():
            for i, b in enumerate(buffers):  # running statistics (DPBERT's standardised planners) are state too
                if f"buffer.{i}" in tensors:  # absent in states saved before buffers were
                    b.copy_(tensors[f"buffer.{i}"].reshape(b.shape))
            for i, p in enumerate(parameters):
                p.copy_(tensors[f"param.{i}"])
                state = {
                    key.split(".", 2)[2]: value for key, value in tensors.items() if key.startswith(f"optim.{i}.")
                }
                if state:
                    optimizer.state[p] = {
                        key: value.reshape(()) if key == "step" else value.to(p.device) for key, value in state.items()
                    }
        torch.set_rng_state(tensors["rng.torch"])
        return json.loads((self.folder / "position.json").read_text())["step"]

    def exists(self) -> bool:
        return (self.folder / "position.json").is_file()


OWN_DATA = ("train_file", "dataset")
DATA_OPTIONS = {  # each data option, and the sources of data it goes with
    **dict.fromkeys(("text_column", "pair_column", "label_column", "regression", "task_name"), OWN_DATA),
    "from_hub": ("task",),
    "dev_file": ("train_file",),
    "dataset_config": ("dataset",),
    "dev_split": ("dataset",),
}


def data_source(args: argparse.Namespace) -> DataSource | None:
    """Where a task of one's own comes from (None: a GLUE --task).

    Options that do not go with the data given are refused.
    """
    given = next(name for name in ("task", *OWN_DATA) if getattr(args, name))
    wrong = [name for name, sources in DATA_OPTIONS.items() if getattr(args, name) and given not in sources]
    if wrong:
        raise UserError(
            f"{', '.join(map(option_flag, wrong))} cannot go with {option_flag(given)}: see python -m "
            "training.train --help"
        )
    if args.task:
        return None
    return DataSource(
        text_column=args.text_column or "text",
        label_column=args.label_column or "label",
        pair_column=args.pair_column,
        regression=args.regression,
        train_file=None if args.train_file is None else str(Path(args.train_file).resolve()),
        dev_file=None if args.dev_file is None else str(Path(args.dev_file).resolve()),
        dataset=args.dataset,
        dataset_config=args.dataset_config,
        dev_split=args.dev_split,
    )


def training_data(args: argparse.Namespace) -> tuple[TaskSpec, Dataset, Dataset | None, Dataset, dict]:
    """The task, its training rows, the held-out validation rows (with --train-split fit), the dev rows, and what
    config.json records of them.
    """
    source = data_source(args)
    if source is None:
        spec, recorded = get_task(args.task), {}

        def split(name: str) -> Dataset:
            return load_split(spec.name, name, args.data_dir, args.from_hub)
    else:
        task = check_task_name(
            args.task_name or source.default_task_name(),
            "--task-name" if args.task_name else "the default, from the data's name",
        )
        own = load_own_data(source, task)
        spec, recorded, split = own.spec, {"data": own.record}, own.split
    if (
        args.train_split == "fit"
    ):  # the training rows once: their held-out rows are what recipes are compared on afterwards
        whole_train = split("train")
        train_set, validation_set = carve_validation(whole_train)
        recorded["validation_split"] = VALIDATION.to_dict(len(whole_train))
    else:
        train_set, validation_set = split(args.train_split), None
    return spec, train_set, validation_set, split("dev"), recorded


def train(args: argparse.Namespace) -> dict:
    spec, train_set, validation_set, dev_set, recorded = training_data(args)
    out = Path(args.out or f"runs/{spec.name.replace('-', '').lower()}/{args.method}")
    set_seed(args.seed)
    # a stage may leave some trainable parameters out of a step (a bypassed layer, the unused pooler): DDP must not
    # wait for them
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(
        mixed_precision="bf16" if args.bf16 else "no",
        cpu=resolve_device(args.device).type == "cpu",
        kwargs_handlers=[ddp],
    )
    stage = METHODS[args.method].stage(args.stage)
    model = starting_model(
        args.method,
        spec,
        stage,
        method_settings(args),
        args.backbone,
        args.init,
        args.finetune,
        args.lora_rank,
        args.encoder_from,
    )
    parameters = trainable_parameters(model, stage, freeze_embeddings=args.freeze_embeddings)
    model.config.max_length = args.max_length

    if args.train_limit:
        train_set = train_set.select(range(min(args.train_limit, len(train_set))))
    if args.eval_limit:
        dev_set = dev_set.select(range(min(args.eval_limit, len(dev_set))))

    pairs = list(train_set["text_pair"]) if spec.pair else None
    encoded = model.tokenizer(list(train_set["text"]), pairs, truncation=True, max_length=args.max_length)
    labels = list(train_set["label"])
    lengths = [len(ids) for ids in encoded["input_ids"]]

    def collate(indices: list[int]) -> dict[str, torch.Tensor]:
        features = [
            {key: encoded[key][i] for key in ("input_ids", "attention_mask", "token_type_ids")} for i in indices
        ]
        batch = model.tokenizer.pad(features, return_tensors="pt")
        batch["labels"] = torch.tensor(
            [labels[i] for i in indices], dtype=torch.float if spec.is_regression else torch.long
        )
        return dict(batch)

    batches_per_epoch = -(-len(lengths) // args.batch_size)
    steps_per_epoch = -(
        -batches_per_epoch // accelerator.num_processes
    )  # under accelerate launch each process takes its share
    total_steps = args.max_steps or max(1, int(steps_per_epoch * args.epochs))
    encoder_lr = args.encoder_lr or args.lr / 10
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    full_encoder = [p for p in parameters if id(p) in encoder_ids and model.config.encoder_weights == "full"]
    rest = [p for p in parameters if not any(p is q for q in full_encoder)]
    groups = [{"params": rest, "lr": args.lr}] + ([{"params": full_encoder, "lr": encoder_lr}] if full_encoder else [])
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup * total_steps), total_steps)
    objective = TrainingObjective(model, stage)
    objective, optimizer = accelerator.prepare(objective, optimizer)

    resume = ResumeState(out / "resume")
    buffers = list(model.buffers())  # running statistics are state to resume, like the weights
    step = 0
    if args.resume and resume.exists():
        step = resume.load(parameters, buffers, optimizer)
        with warnings.catch_warnings():  # fast-forwarding the schedule before any optimiser step is intended
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(step):
                scheduler.step()
        accelerator.print(f"resumed from step {step}")

    objective.train()
    progress = tqdm(
        total=total_steps,
        initial=step,
        disable=args.quiet or not accelerator.is_main_process,
        desc=f"{args.method} {spec.name}",
        dynamic_ncols=True,
    )
    began, seen = time.perf_counter(), 0
    epoch = step // steps_per_epoch
    while step < total_steps:
        batches = length_grouped_batches(lengths, args.batch_size, seed=args.seed + epoch)
        # its own generator, so creating the loader does not draw from the global RNG (dropout), and a resumed run
        # matches
        loader = accelerator.prepare_data_loader(
            DataLoader(
                range(len(lengths)),
                batch_sampler=batches,
                collate_fn=collate,
                generator=torch.Generator().manual_seed(args.seed + epoch),
            )
        )
        for position, batch in enumerate(loader):
            if position < step - epoch * steps_per_epoch:
                continue  # already done before the interruption
            with accelerator.autocast():
                loss, stats = objective(**batch)
            if not torch.isfinite(loss):
                raise UserError(f"the loss became {loss.item()} at step {step}: lower --lr")
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            seen += len(batch["labels"])
            progress.update(1)
            progress.set_postfix(
                {
                    **{k: f"{v:.4f}" for k, v in list(stats.items())[:3]},
                    "ex/s": f"{seen / (time.perf_counter() - began):.1f}",
                }
            )
            if step % args.save_every == 0 and accelerator.is_main_process:  # every process holds the same weights
                resume.save(parameters, buffers, optimizer, step)
            if step >= total_steps:
                break
        epoch += 1
    progress.close()

    objective.eval()
    model = model.eval()
    result = evaluate(model, dev_set)
    model.config.trained = True
    model.config.training = (
        {
            key: value
            for key, value in vars(args).items()
            if key not in ("quiet", "resume", "command") and not key.startswith("setting_")
        }
        | {
            "steps": step,
            "stage": stage.name,
            "command": args.command,
            "train_rows": len(train_set),
            "processes": accelerator.num_processes,
        }
        | recorded
    )
    if validation_set is not None:
        validation = evaluate(model, validation_set)
        # every metric of the task (MRPC: accuracy and F1 both), so variants can be compared the way the targets
        # compare them
        model.config.training["validation_metrics"] = {
            key: value
            for key, value in validation.items()
            if isinstance(value, (int, float, str)) and key not in ("task", "method", "threshold")
        }
    model.config.metrics = result
    if accelerator.is_main_process:
        save_checkpoint(model, out)
    accelerator.print(
        json.dumps(
            {"out": str(out), **{k: v for k, v in result.items() if k not in ("layer_frequency", "exit_frequency")}}
        )
    )
    return result


@command_line
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.command = "python -m training.train " + shlex.join(sys.argv[1:] if argv is None else argv)
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
