"""`farm regress`, `farm noise` and `farm compare`: A/B verdicts on engine commits and stored runs.

stdout carries the markdown summary (what a CI job posts as a comment); progress goes to stderr.
`farm regress` exits 1 when a metric regressed beyond max(threshold, MDE) or the head fails where the
base ran, 0 otherwise; configuration errors exit 2 as everywhere in farm. The runs themselves are
:func:`farm.regress.run_regression` and :func:`farm.regress.run_noise`: this module parses options,
prints what they return and maps the verdict to the exit code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from farm.analysis.summary import axes_label
from farm.cli._common import db_option, devices_option, open_store
from farm.errors import ConfigError
from farm.regress.schedule import INTERLEAVED

err = Console(stderr=True, highlight=False, markup=False)  # model and device names print literally

threshold_option = click.option("--threshold", default=0.03, show_default=True, type=click.FloatRange(0, 1),
                                help="Smallest relative change that fails CI (0.03 = 3%); the MDE raises it.")
interleave_option = click.option(
    "--interleave", default="auto", show_default=True, type=click.Choice(["auto", "step", "process"]),
    help="step: one job runs both builds in lock step, a timed phase each (farm-pair), for the tightest "
         "timing; process: one process per side, the only way to attribute energy/token. auto: step "
         "where the engine supports it.")
alpha_option = click.option("--alpha", default=0.05, show_default=True, type=click.FloatRange(0.0001, 0.5),
                            help="Significance level of each test.")


def _progress(event: Any) -> None:
    if event.status in ("done", "failed", "retry"):
        j = event.job
        detail = f" ({event.detail[:80]})" if event.detail and event.status != "done" else ""
        err.print(f"  {j.index:4d} {j.device} {j.tags.get('variant')} pair {j.tags.get('pair')} {j.model.label} "
                  f"{j.test}: {event.status}{detail}")


def _emit(md: str, payload: dict[str, Any], json_path: str | None) -> None:
    click.echo(md)
    if json_path:
        Path(json_path).write_text(json.dumps(payload, indent=1, default=str))
        err.print(f"wrote {json_path}")


@click.command("regress")
@click.option("--engine", "engine", required=True, type=click.Path(file_okay=False, exists=True),
              help="Git repository of the engine (farm itself, a reference-engine repo or llama.cpp).")
@click.option("--base", required=True, help="Base revision (A): branch, tag or SHA.")
@click.option("--head", required=True, help="Head revision (B) to judge against the base.")
@click.option("--sweep", "sweep_path", default="jobs/regression.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="What to measure; `repetitions` is the count per side.")
@click.option("--engine-subdir", default=None, help="Engine sources inside the repository (auto-detected).")
@click.option("--flag", "flags", multiple=True, help="Extra build flag for both sides (repeatable).")
@click.option("--block", default=1, show_default=True, type=click.IntRange(1, 100),
              help="Timed repetitions per side and job (process); 1 samples process-level noise best.")
@interleave_option
@threshold_option
@alpha_option
@click.option("--json", "json_path", default="farm-regress.json", show_default=True, help="Write the verdicts here.")
@db_option
@devices_option
def regress_cmd(engine: str, base: str, head: str, sweep_path: str, engine_subdir: str | None,
                flags: tuple[str, ...], block: int, interleave: str, threshold: float, alpha: float,
                json_path: str | None, db_url: str | None, devices_path: str | None) -> None:
    """Build BASE and HEAD of an engine, run them ABBA on each device and judge every metric."""
    from farm import regress

    verdict = regress.run_regression(engine, base, head, sweep_path=sweep_path, engine_subdir=engine_subdir,
                                     flags=flags, block=block, interleave=interleave, threshold=threshold,
                                     alpha=alpha, db_url=db_url, devices_path=devices_path, on_message=err.print,
                                     progress=_progress)
    run_id, interleave, report, failed = verdict.run_id, verdict.interleave, verdict.report, verdict.failed
    a, b, bad, head_broke = verdict.base, verdict.head, report.regressions, verdict.head_broke
    if bad or head_broke:
        where = sorted({f"{r.metric.label} on {r.cell['device']}" for r in bad})
        title = "❌ farm regress: " + ("; ".join(where) if where else "head fails where base runs")
    else:
        title = "✅ farm regress: no regression"
    header = [f"base `{a['commit'][:10]}` ({a['subject']}) → head `{b['commit'][:10]}` ({b['subject']})",
              f"sweep `{verdict.sweep_name}` · run `{run_id}` · {verdict.pairs} ABBA pairs per cell, "
              f"{INTERLEAVED[interleave]} · threshold "
              f"{threshold:.0%} · α {alpha} · Yuen 20%-trimmed t on pair log-ratios · Holm across metric families"]
    blind = sorted({f"{r.metric.label} of {r.cell['model']} {regress.compare.pct(r.mde)}" for r in report.results
                    if r.mde is not None and r.mde > threshold and r.verdict and r.verdict.label != "regression"})
    if interleave == "step":
        header.append("energy/token not judged: in lock step both builds share every power sample "
                      "(`--interleave process` attributes it)")
    if blind:  # say when "no regression" only means "nothing this large could be seen"
        header.append(f"⚠ noisy: changes below the MDE cannot be called here ({', '.join(blind)})")
    for variant, errors in sorted(failed.items()):
        header.append(f"**{len(errors)} failed job(s) on {'base' if variant == 'A' else 'head'}**: {errors[0][:200]}")
    md = regress.compare.markdown(report, title, header)
    payload = regress.report_json(report, run_id=run_id, base=a, head=b, threshold=threshold, alpha=alpha,
                                  pairs=verdict.pairs, interleave=interleave, failed=failed,
                                  builds=verdict.builds,
                                  verdict="regression" if bad or head_broke else "ok")
    _emit(md, payload, json_path)
    sys.exit(1 if verdict.regressed else 0)


@click.command("noise")
@click.option("--engine", "engine", default=None, type=click.Path(file_okay=False, exists=True),
              help="Engine repository (default: the sweep's own build).")
@click.option("--rev", default="HEAD", show_default=True, help="Revision measured against itself.")
@click.option("--sweep", "sweep_path", default="jobs/regression.yaml", show_default=True,
              type=click.Path(dir_okay=False))
@click.option("--engine-subdir", default=None)
@click.option("--block", default=1, show_default=True, type=click.IntRange(1, 100))
@interleave_option
@alpha_option
@click.option("--json", "json_path", default=None, help="Also write the noise table here.")
@db_option
@devices_option
def noise_cmd(engine: str | None, rev: str, sweep_path: str, engine_subdir: str | None, block: int, interleave: str,
              alpha: float, json_path: str | None, db_url: str | None, devices_path: str | None) -> None:
    """Run one build against itself (A/A) on each device; store the noise and minimum detectable effect."""
    from farm import regress

    noise = regress.run_noise(engine, rev, sweep_path=sweep_path, engine_subdir=engine_subdir, block=block,
                              interleave=interleave, alpha=alpha, db_url=db_url, devices_path=devices_path,
                              on_message=err.print, progress=_progress)
    run_id, table, mode = noise.run_id, noise.rows, noise.interleave
    lines = [f"### farm noise: A/A on `{rev}` · run `{run_id}` · {INTERLEAVED[mode]}", "",
             "| device | cell | metric | pairs | noise sd | MDE | A/A change | p |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for row in table:
        cell = f"{row['backend']} {row['model']} {row['quant']} {row['test']} t{row['threads']}{axes_label(row)}"
        lines.append(f"| {row['device']} | {cell} | {row['metric']} | {row['n_pairs']} | {row['noise_sd']:.2%} | "
                     f"{row['mde']:.1%} | {row['aa_change']:+.1%} | {row['aa_p']:.2g} |")
    _emit("\n".join(lines) + "\n", {"run_id": run_id, "noise": regress._jsonable(table)}, json_path)


@click.command("compare")
@click.argument("run_a")
@click.argument("run_b")
@threshold_option
@alpha_option
@click.option("--json", "json_path", default=None, help="Also write the comparison here.")
@db_option
def compare_cmd(run_a: str, run_b: str, threshold: float, alpha: float, json_path: str | None,
                db_url: str | None) -> None:
    """Compare two stored runs cell by cell (unpaired: Mann–Whitney U, ratio of medians, bootstrap CI).

    RUN may be RUN_ID:A or RUN_ID:B to take one side of a regress or noise run."""
    from farm import regress
    from farm.analysis import compare

    store = open_store(db_url)

    def load(ref: str):  # RUN or RUN:VARIANT (a side of a regress/noise run)
        run_id, _, variant = ref.partition(":")
        run = store.get_run(run_id)
        df = store.results_frame(run.id)
        if variant:
            df = df[df["variant"] == variant]
            if df.empty:
                raise ConfigError(f"run {run.id} has no repetitions of variant {variant!r} (A = base, B = head)")
        return run, df

    (ra, a), (rb, b) = load(run_a), load(run_b)
    report = compare.compare_unpaired(a, b, threshold=threshold, alpha=alpha)
    if not report.results:
        raise ConfigError(f"runs {ra.id} and {rb.id} share no cell (device, backend, model, quant, test, threads)")
    title = f"farm compare: `{run_a}` ({ra.name}) → `{run_b}` ({rb.name})"
    header = [f"threshold {threshold:.0%} · α {alpha} · runs at different times: "
              "unpaired, so drift between them is not cancelled"]
    if (ra.id, run_a.partition(":")[2]) == (rb.id, run_b.partition(":")[2]):
        warning = (f"⚠ run {ra.id} is compared with itself: every ratio is 1 by construction and says nothing "
                   "about noise (`farm noise` measures A/A noise)")
        err.print(warning)
        header.append(warning)
    md = compare.markdown(report, title, header)
    _emit(md, regress.report_json(report, run_a=ra.id, run_b=rb.id, warnings=header[1:]), json_path)


commands = [regress_cmd, noise_cmd, compare_cmd]
