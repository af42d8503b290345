"""What each layer knows: a linear probe on the [CLS] state and on the mean of the token states, after every layer.

    python -m training.probe --task SST-2 --backbone --checkpoints assets/checkpoints/sst2/full \\
        --out assets/results/sst2-probe

For the backbone as published (``--backbone``) and for each checkpoint's encoder, the states of
``--train-rows`` rows of the fit split and of every dev row are taken after the embeddings and
after every layer, pooled both ways; a logistic regression (a ridge regression for a score) is
fitted per layer and pooling on the training rows and scored on dev. A decision that reads a
pooled state can only be as input-aware as this probe says the state is: a [CLS] state that
scores the majority share carries nothing a head could use. Writes ``results.csv`` (one row per
model, layer and pooling, with the dev majority share) and the chart ``chart.html``/``chart.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import pearsonr
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from core.backbone import DEFAULT_BACKBONE
from core.checkpoint import load_checkpoint
from core.csvsafe import write_csv
from core.errors import UserError, command_line
from core.methods import BASELINE
from core.model import AdaptiveModel, build_model
from core.pooling import POOLINGS, pool
from core.tasks import task_slug
from interpret.charts import probe_chart
from training.data import DEFAULT_DATA_DIR, load_split

COLUMNS = ["model", "layer", "pooling", "metric_name", "metric", "majority_share", "train_rows", "dev_rows"]


@torch.inference_mode()
def pooled_states(model: AdaptiveModel, dataset, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Per pooling, [rows, layers + 1, hidden].

    The pooled embeddings (layer 0) and the pooled state after every layer.
    """
    encoder = model.encoder.eval()
    texts, pairs = list(dataset["text"]), list(dataset["text_pair"]) if model.config.pair else None
    collected: dict[str, list[torch.Tensor]] = {pooling: [] for pooling in POOLINGS}
    for start in range(0, len(texts), batch_size):
        encoded = model.tokenize(
            texts[start : start + batch_size], None if pairs is None else pairs[start : start + batch_size]
        )
        hidden = encoder.embed(encoded["input_ids"], encoded.get("token_type_ids"))
        layer_mask = encoder.attention_mask_for(hidden, encoded["attention_mask"])
        states = [hidden]
        for index in range(encoder.num_layers):
            hidden = encoder.run_layer(index, hidden, layer_mask)
            states.append(hidden)
        for pooling in POOLINGS:
            collected[pooling].append(
                torch.stack([pool(state, encoded["attention_mask"], pooling) for state in states], 1)
            )
    return {pooling: torch.cat(parts).float().numpy() for pooling, parts in collected.items()}


def probe_score(
    train_x: np.ndarray, train_y: np.ndarray, dev_x: np.ndarray, dev_y: np.ndarray, regression: bool
) -> float:
    """Dev accuracy of a logistic regression fitted on standardised states.

    For scores: the Pearson correlation of a ridge regression.
    """
    if regression:
        fitted = make_pipeline(StandardScaler(), Ridge(alpha=10.0)).fit(train_x, train_y)
        return float(pearsonr(fitted.predict(dev_x), dev_y)[0])
    fitted = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1)).fit(train_x, train_y)
    return float((fitted.predict(dev_x) == dev_y).mean())


def model_label(model: AdaptiveModel, backbone: bool) -> str:
    return "backbone" if backbone else f"{model.config.method} model ({model.method.pooling} pooling)"


def probe_rows(models: list[tuple[str, AdaptiveModel]], train, dev) -> list[dict]:
    regression = models[0][1].config.labels is None
    train_y, dev_y = np.asarray(train["label"]), np.asarray(dev["label"])
    majority = None if regression else float(np.bincount(dev_y.astype(int)).max() / len(dev_y))
    rows = []
    for label, model in models:
        train_states, dev_states = pooled_states(model, train), pooled_states(model, dev)
        for pooling in POOLINGS:
            for layer in range(train_states[pooling].shape[1]):
                score = probe_score(
                    train_states[pooling][:, layer], train_y, dev_states[pooling][:, layer], dev_y, regression
                )
                rows.append(
                    {
                        "model": label,
                        "layer": layer,
                        "pooling": pooling,
                        "metric_name": "pearson" if regression else "accuracy",
                        "metric": score,
                        "majority_share": majority,
                        "train_rows": len(train_y),
                        "dev_rows": len(dev_y),
                    }
                )
    return rows


def earlier_rows(results: Path, probed: pd.DataFrame) -> pd.DataFrame:
    """The rows of an earlier probe's ``results.csv`` for the models not probed again, checked to be comparable."""
    if not results.is_file():
        raise UserError(
            f"--add keeps the rows of {results.parent.name}/results.csv, which does not exist: leave out --add"
        )
    earlier = pd.read_csv(results)
    if list(earlier.columns) != COLUMNS:
        raise UserError(f"{results.parent.name}/results.csv is not a probe's table: leave out --add")
    kept = earlier[~earlier["model"].isin(set(probed["model"]))]
    settings = ["metric_name", "train_rows", "dev_rows"]
    if not kept.empty and set(map(tuple, kept[settings].values)) != set(map(tuple, probed[settings].values)):
        raise UserError(
            f"{results.parent.name}/results.csv was probed with other rows or another metric "
            f"({', '.join(settings)}): probe every model again without --add"
        )
    return kept


@command_line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.probe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", required=True)
    parser.add_argument("--checkpoints", nargs="*", default=[], help="checkpoints whose encoders are probed")
    parser.add_argument("--backbone", action="store_true", help="probe the backbone as published too")
    parser.add_argument(
        "--backbone-name", default=DEFAULT_BACKBONE, help="which backbone --backbone probes (default: %(default)s)"
    )
    parser.add_argument(
        "--train-rows", type=int, default=3000, help="fit-split rows the probes are fitted on (default: %(default)s)"
    )
    parser.add_argument("--dev-limit", type=int, help="only the first N dev rows")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--out", required=True, help="folder for results.csv and the chart")
    parser.add_argument(
        "--add",
        action="store_true",
        help="keep the other models' rows of --out's results.csv (a probed model's earlier rows are replaced), so "
        "one more checkpoint is probed without probing again those that were",
    )
    args = parser.parse_args(argv)
    if not args.checkpoints and not args.backbone:
        raise UserError("nothing to probe: give --checkpoints, --backbone or both")
    torch.manual_seed(0)
    models = [("backbone", build_model(BASELINE, args.task, backbone=args.backbone_name))] if args.backbone else []
    for folder in args.checkpoints:
        model = load_checkpoint(folder)
        if task_slug(model.config.task) != task_slug(args.task):
            raise UserError(f"{folder} was trained on {model.config.task}, not {args.task}")
        models.append((model_label(model, backbone=False), model))
    train = load_split(args.task, "fit", args.data_dir).shuffle(seed=0)
    train = train.select(range(min(args.train_rows, len(train))))
    dev = load_split(args.task, "dev", args.data_dir)
    if args.dev_limit:
        dev = dev.select(range(min(args.dev_limit, len(dev))))
    frame = pd.DataFrame(probe_rows(models, train, dev), columns=COLUMNS)
    out = Path(args.out)
    if args.add:
        frame = pd.concat([earlier_rows(out / "results.csv", frame), frame], ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(frame, out / "results.csv")
    chart = probe_chart(frame, models[0][1].config.task)
    chart.save(str(out / "chart.html"))
    chart.save(str(out / "chart.png"))
    print(frame.pivot_table(index="layer", columns=["model", "pooling"], values="metric").round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
