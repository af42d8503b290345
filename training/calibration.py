"""Choosing an operating point on the validation rows held out of train; dev is only reported.

    python -m training.calibration --checkpoint runs/mrpc/deebert --reference runs/mrpc/full --max-metric-drop 0.02
    python -m training.calibration --checkpoint runs/mrpc/dpbert --reference runs/mrpc/full --target-speedup 1.5 \\
        --write

Every knob value of the method's grid (or, for a method whose trade-off is set in training, every
trained variant given) is evaluated on the validation split; the goal picks one; that point is
then evaluated on dev. ``training.publish`` uses the same ``calibrate`` for the shipped
checkpoints, and ``record`` is the one writer of operating points into a checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datasets import Dataset

from core.checkpoint import load_checkpoint, read_config, write_config, write_operating_point
from core.errors import UserError, command_line
from core.model import AdaptiveModel
from core.precision import FP32, ONNX, PRECISIONS, faster_precisions
from training.data import DEFAULT_DATA_DIR, VALIDATION, checkpoint_split
from training.evaluate import EVALUATION_BATCH_SIZE, evaluate, pct_of_full, sweep
from training.metrics import agreement
from training.targets import KEEP, MAX_NO_LAYER_SHARE, PRECISION_NOISE, compared_metrics, share_of_full


@dataclass(frozen=True)
class Goal:
    """Keep at least ``keep`` of the reference metric (fastest such point), or reach ``target_speedup`` (most accurate
    such point).

    Either way a point that answers more than ``max_no_layer_share`` of the inputs without running
    a layer is only taken when no other point is left: such a point keeps its metric by answering
    the majority class, not by adapting.
    """

    keep: float = KEEP
    target_speedup: float | None = None
    max_no_layer_share: float = MAX_NO_LAYER_SHARE

    def keeps(self, result: dict, reference: dict) -> bool:
        """Whether a point keeps this goal's share of the reference metric without answering too many inputs with
        no layer.
        """
        share = share_of_full(result["task"], result, reference)
        return (
            share is not None
            and share >= self.keep - 1e-9
            and result.get("no_layer_share", 0.0) <= self.max_no_layer_share
        )

    def describe(self) -> str:
        if self.target_speedup is not None:
            rule = f"most accurate point reaching {self.target_speedup:g}x expected speed-up"
        else:
            rule = f"fastest point keeping {self.keep:.0%} of the full model's metric (MRPC: accuracy and F1 both)"
        return (
            f"{rule} and answering at most {self.max_no_layer_share:.0%} of the inputs with no layer, on the "
            "validation split"
        )


def choose(results: list[dict], reference: dict, goal: Goal) -> dict:
    """The point the goal asks for; when none meets it, the closest (most accurate, or fastest)."""
    adapting = [r for r in results if r.get("no_layer_share", 0.0) <= goal.max_no_layer_share] or results

    def kept(result: dict) -> float:
        return share_of_full(result["task"], result, reference) or 0.0

    if goal.target_speedup is not None:
        reaching = [r for r in adapting if r["expected_speedup"] >= goal.target_speedup - 1e-9]
        if not reaching:
            return max(adapting, key=lambda r: (r["expected_speedup"], kept(r)))
        return max(reaching, key=lambda r: (kept(r), r["expected_speedup"]))
    keeping = [r for r in adapting if kept(r) >= goal.keep]
    if not keeping:
        return max(adapting, key=lambda r: (kept(r), r["expected_speedup"]))
    return max(keeping, key=lambda r: (r["expected_speedup"], kept(r)))


def check_precisions(
    model: AdaptiveModel, threshold: float | None, validation: Dataset, reference: dict | None, goal: Goal
) -> dict[str, dict]:
    """The operating point at every precision faster than fp32 on the model's device, on the validation split.

    For each: its metric and share of the fp32 full model's (``reference``), its agreement with the
    fp32 point (share of inputs answered alike), its average layers and no-layer share, and whether
    it still keeps the point: ``goal``'s share of the full model, or the fp32 point's own share
    where that is lower (a point chosen for its speed-up, or one that misses the goal in fp32
    already: another precision may not lose more than ``PRECISION_NOISE``, the share that kernel
    rounding alone moves a metric such as Pearson). ``with_precision("fastest")`` reads these
    records. ``model`` is the fp32 model; ``reference`` None: it is its own reference (a full model).
    """
    point = evaluate(model, validation, threshold, with_predictions=True)
    reference = point if reference is None else reference
    floor = (share_of_full(point["task"], point, reference) or 0.0) - PRECISION_NOISE
    keep = floor if goal.target_speedup is not None else min(goal.keep, floor)
    tolerance = Goal(keep=keep, max_no_layer_share=goal.max_no_layer_share)
    regression = model.config.labels is None
    checks = {}
    for precision in faster_precisions(model.device):
        single = 1 if precision in ONNX else EVALUATION_BATCH_SIZE  # a single input runs as one graph: check that
        result = evaluate(
            model.with_precision(precision), validation, threshold, with_predictions=True, batch_size=single
        )
        checks[precision] = {
            "metric": result["metric"],
            "metric_pct_of_full": pct_of_full(result, reference),
            "agreement": agreement(result["predictions"], point["predictions"], regression),
            "avg_layers": result["avg_layers"],
            "no_layer_share": result.get("no_layer_share"),
            "keeps": tolerance.keeps(result, reference),
        }
    return checks


@dataclass
class Calibration:
    model: AdaptiveModel  # the chosen candidate
    threshold: float | None
    validation: dict  # the chosen point on the validation split
    validation_reference: dict  # the full model on the validation split
    dev: dict  # the chosen point on dev, with % of the full model's dev metric
    points: list[dict] = field(default_factory=list)  # every validation point evaluated
    precisions: dict[str, dict] = field(default_factory=dict)  # the chosen point at faster precisions (validation)

    def operating_point(self, goal: Goal) -> dict:
        """What config.json records about how the point was chosen, and how it fares at faster precisions."""
        keys = ("metric_name", "metric", "avg_layers", "expected_speedup", "top_path_share", "no_layer_share")
        return {
            "chosen_on": "validation",
            "rule": goal.describe(),
            "precision": self.model.precision,
            "validation_split": asdict(VALIDATION) | {"rows": self.validation["examples"]},
            "validation": {key: self.validation.get(key) for key in keys}
            | {
                "reference_metric": self.validation_reference["metric"],
                "metric_pct_of_full": pct_of_full(self.validation, self.validation_reference),
            },
            "precisions": self.precisions,
        }


def calibrate(
    candidates: list[AdaptiveModel],
    reference: AdaptiveModel,
    validation: Dataset,
    dev: Dataset,
    goal: Goal = Goal(),
    dev_reference: dict | None = None,
    precision_check: bool = False,
) -> Calibration:
    """Evaluate every candidate's knob grid (or its one point) on ``validation``, choose by ``goal``, report it on
    ``dev``.

    ``precision_check``: also evaluate the chosen point of an fp32 model at the faster precisions
    (``check_precisions``), which ``--precision fastest`` reads.
    """
    if not candidates:
        raise UserError("nothing to calibrate: give at least one checkpoint")
    validation_reference = evaluate(reference, validation)
    points = []
    for index, model in enumerate(candidates):
        results = sweep(model, validation) if model.method.knob is not None else [evaluate(model, validation)]
        points += [result | {"candidate": index} for result in results]
    chosen = choose(points, validation_reference, goal)
    model = candidates[chosen["candidate"]]
    dev_reference = dev_reference or evaluate(reference, dev)
    dev_result = evaluate(model, dev, chosen["threshold"])
    compared = compared_metrics(dev_result["task"], dev_result["metric_name"])
    dev_result |= {
        "reference_metric": dev_reference["metric"],
        "reference_metrics": {name: dev_reference[name] for name in compared},
        "metric_pct_of_full": pct_of_full(dev_result, dev_reference),
    }
    precisions = (
        check_precisions(model, chosen["threshold"], validation, validation_reference, goal)
        if precision_check and model.precision == FP32
        else {}
    )
    return Calibration(model, chosen["threshold"], chosen, validation_reference, dev_result, points, precisions)


def record(folder: str | Path, calibration: Calibration, goal: Goal) -> None:
    """Write the chosen point into a checkpoint folder (its knob value, how it was chosen, its dev metrics)."""
    write_operating_point(folder, calibration.threshold, calibration.dev, calibration.operating_point(goal))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.calibration",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint",
        nargs="+",
        required=True,
        help="the checkpoint (several: trained variants of one method, e.g. DACT's tau values)",
    )
    parser.add_argument("--reference", required=True, help="the task's full model")
    goal = parser.add_mutually_exclusive_group()
    goal.add_argument(
        "--max-metric-drop",
        type=float,
        help=f"keep at least (1 - D) of the full model's metric, as fast as possible (default D = {1 - KEEP:.2f})",
    )
    goal.add_argument(
        "--target-speedup",
        type=float,
        help="the most accurate point with at least this expected speed-up (6 / average layers)",
    )
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument(
        "--write", action="store_true", help="record the chosen point in the chosen checkpoint's config.json"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=FP32,
        help="calibrate the model as it will run: fp32 (default), bf16 or int8 (both models at this precision)",
    )
    parser.add_argument(
        "--no-precision-check",
        action="store_true",
        help="do not evaluate the chosen fp32 point at the faster precisions (what --precision fastest reads)",
    )
    parser.add_argument(
        "--only-precisions",
        action="store_true",
        help="keep each checkpoint's recorded operating point and only check it at the faster precisions (with "
        "--write: record that); a checkpoint may be the full model itself",
    )
    return parser.parse_args(argv)


def print_precision_checks(checks: dict[str, dict]) -> None:
    for precision, check in checks.items():
        share = "n/a" if check["metric_pct_of_full"] is None else f"{check['metric_pct_of_full']:.1f}%"
        print(
            f"  {precision}: validation {check['metric']:.4f} ({share} of full), {100 * check['agreement']:.1f}% "
            f"answered as fp32 answers, {'keeps' if check['keeps'] else 'misses'} the operating point"
        )


def record_precision_checks(
    folders: list[str], reference: AdaptiveModel, validation: Dataset, goal: Goal, write: bool
) -> None:
    """Check each checkpoint's recorded point at the faster precisions, print it, and with ``write`` record it."""
    validation_reference = evaluate(reference, validation)
    for folder in folders:
        model = load_checkpoint(folder)
        checks = check_precisions(model, model.config.threshold, validation, validation_reference, goal)
        print(folder)
        print_precision_checks(checks)
        if write:
            config = read_config(folder)
            config.operating_point["precisions"] = checks
            write_config(config, folder)


@command_line
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.max_metric_drop is not None and not 0 <= args.max_metric_drop < 1:
        raise UserError(f"--max-metric-drop is a fraction in [0, 1), such as 0.02, not {args.max_metric_drop}")
    if args.target_speedup is not None and args.target_speedup < 1:
        raise UserError(f"--target-speedup is at least 1 (no speed-up), not {args.target_speedup}")
    goal = Goal(
        keep=KEEP if args.max_metric_drop is None else 1 - args.max_metric_drop, target_speedup=args.target_speedup
    )
    if args.only_precisions:
        if args.precision != FP32:
            raise UserError("--only-precisions checks an fp32 point at the faster precisions: leave out --precision")
        reference = load_checkpoint(args.reference)
        validation = checkpoint_split(reference.config, "validation", args.data_dir)
        record_precision_checks(args.checkpoint, reference, validation, goal, args.write)
        return 0
    reference = load_checkpoint(args.reference).with_precision(args.precision)
    candidates = [load_checkpoint(folder).with_precision(args.precision) for folder in args.checkpoint]
    for model in candidates:
        if model.config.task != reference.config.task:
            raise UserError(
                f"{model.source} is a {model.config.task} model but the reference is {reference.config.task}"
            )
    validation, dev = (checkpoint_split(reference.config, split, args.data_dir) for split in ("validation", "dev"))
    result = calibrate(candidates, reference, validation, dev, goal, precision_check=not args.no_precision_check)
    threshold = "–" if result.threshold is None else f"{result.threshold:g}"
    print(f"{goal.describe()}: {result.model.source} at threshold {threshold} ({result.model.precision})")
    print(
        f"  validation: {result.validation['metric_name']} {result.validation['metric']:.4f} (full "
        f"{result.validation_reference['metric']:.4f}), "
        f"{result.validation['avg_layers']:.2f} layers, {result.validation['expected_speedup']:.2f}x"
    )
    share = "n/a" if result.dev["metric_pct_of_full"] is None else f"{result.dev['metric_pct_of_full']:.1f}%"
    print(
        f"  dev:        {result.dev['metric_name']} {result.dev['metric']:.4f} ({share} of full), "
        f"{result.dev['avg_layers']:.2f} layers, {result.dev['expected_speedup']:.2f}x, most common path "
        f"{result.dev['top_path_share']:.0%}"
    )
    print_precision_checks(result.precisions)
    if args.write:
        record(result.model.source, result, goal)
        print(f"recorded in {Path(result.model.source) / 'config.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
