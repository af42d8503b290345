"""Layer-usage report from the query log: CSV and JSON (one row per query and method) and one HTML page.

    python -m interpret.report --db queries.db --out report/ [--task MRPC] [--since 7d]

The HTML page is self-contained (charts inlined as SVG, no scripts), so it can be mailed or
archived. The CSV is safe to open in a spreadsheet: a logged text that starts like a formula
(``=HYPERLINK(...)``) is written with a leading apostrophe (``core.csvsafe``). The demo's Export
button calls ``export_report`` too.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import vl_convert

from core.csvsafe import write_csv
from core.errors import UserError, command_line
from core.tasks import canonical_task
from interpret.charts import layer_frequency_chart, method_title
from interpret.querylog import READ_COLUMNS, parse_since, read_results
from interpret.usage import usage_by_task

CSV_FILE, JSON_FILE, HTML_FILE = "queries.csv", "queries.json", "report.html"
TABLE_CSS = (
    "table.summary { border-collapse: collapse; } "
    "table.summary td, table.summary th { padding: .3rem .8rem; border-bottom: 1px solid #e5e7eb; text-align: right; }"
)
SUMMARY_COLUMNS = [
    "task",
    "method",
    "queries",
    "mean layers executed",
    "mean expected speed-up",
    "exited early",
    "mean latency (ms)",
]


@dataclass
class ReportFiles:
    csv: Path
    json: Path
    html: Path
    rows: int

    def paths(self) -> list[Path]:
        return [self.csv, self.json, self.html]


def summary_table(rows: list[dict]) -> pd.DataFrame:
    """Per task and method: how many queries, layers executed, expected speed-up, share of early exits and latency."""
    if not rows:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    frame = pd.DataFrame(rows)
    frame["layers"] = frame["layers_executed"].map(len)
    frame["exited"] = frame["exit_layer"].notna()
    grouped = frame.groupby(["task", "method"], sort=True)
    table = pd.DataFrame(
        {
            "queries": grouped.size(),
            "mean layers executed": grouped["layers"].mean().round(2),
            "mean expected speed-up": grouped["expected_speedup"].mean().round(2),
            "exited early": grouped["exited"].mean().map("{:.0%}".format),
            "mean latency (ms)": grouped["latency_ms"].mean().round(1),
        }
    ).reset_index()
    table["method"] = table["method"].map(method_title)
    return table[SUMMARY_COLUMNS]


def _svg(chart) -> str:
    return vl_convert.vegalite_to_svg(chart.to_dict(), allowed_base_urls=[])


def render_html(rows: list[dict], filters: str) -> str:
    """The self-contained page: filters, summary table, and per task the layer-frequency charts."""
    sections = []
    for task, usage in usage_by_task(rows).items():
        chart = layer_frequency_chart(usage, f"{task}: layer usage over logged queries")
        sections.append(f"<h2>{html.escape(task)}</h2>\n<figure>{_svg(chart)}</figure>")
    table = summary_table(rows).to_html(index=False, escape=True, border=0, classes="summary")
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    counted = f"{len(rows)} result rows (one per query and method) from the query log"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Adaptive-depth BERT: layer-usage report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #111827; }}
{TABLE_CSS}
table.summary td:nth-child(-n+2), table.summary th:nth-child(-n+2) {{ text-align: left; }}
</style></head><body>
<h1>Layer-usage report</h1>
<p>{counted}; {html.escape(filters)}; generated {generated}.</p>
{table}
{"".join(sections) or "<p>No queries match these filters.</p>"}
</body></html>
"""


def export_report(
    db: str | Path, out_dir: str | Path, task: str | None = None, since: str | None = None
) -> ReportFiles:
    """Write queries.csv, queries.json and report.html for the logged queries that match the filters."""
    task_name = canonical_task(task) if task else None
    rows = read_results(db, task=task_name, since=parse_since(since))
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        files = ReportFiles(out / CSV_FILE, out / JSON_FILE, out / HTML_FILE, len(rows))
        flat = [
            {key: json.dumps(value) if isinstance(value, (list, dict)) else value for key, value in row.items()}
            for row in rows
        ]
        write_csv(pd.DataFrame(flat, columns=list(READ_COLUMNS)), files.csv)
        files.json.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        filters = f"task {task_name or 'any'}, since {since or 'the beginning'}"
        files.html.write_text(render_html(rows, filters), encoding="utf-8")
    except OSError as error:
        raise UserError(f"cannot write the report to {out}: {error}") from error
    return files


@command_line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m interpret.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", required=True, help="the query log (SQLite file written by the demo)")
    parser.add_argument("--out", required=True, help="folder for queries.csv, queries.json and report.html")
    parser.add_argument("--task", help="only this task, e.g. MRPC")
    parser.add_argument(
        "--since", help="only queries since a date (2025-01-31), a time (2025-01-31T12:00, UTC) or 24h / 7d / 2w ago"
    )
    args = parser.parse_args(argv)
    files = export_report(args.db, args.out, task=args.task, since=args.since)
    print(f"{files.rows} rows -> " + ", ".join(str(path) for path in files.paths()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
