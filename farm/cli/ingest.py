"""`farm ingest --backend NAME FILE... --device D --model M`: outputs run by hand, into the store."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from farm.cli._common import console, db_option, open_store, results_table


@click.command("ingest")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--backend", required=True,
              help="Whose output: llamacpp (json, jsonl, csv, markdown), mnn, executorch, mllm, ortgenai, mlc.")
@click.option("--device", required=True, help="The device it ran on (a name; stored with every row).")
@click.option("--model", required=True, help="The model's label.")
@click.option("--quant", default="unknown", show_default=True)
@click.option("--profile", default="manual", show_default=True, help="The device's profile name, if known.")
@click.option("--threads", type=int, default=None, help="Threads, when the output does not say.")
@click.option("--prompt-tokens", type=int, default=None, help="For outputs with rates only (MLC /stats).")
@click.option("--gen-tokens", type=int, default=None, help="For outputs with rates only (MLC /stats).")
@db_option
def command(files: tuple[Path, ...], backend: str, device: str, model: str, quant: str, profile: str,
            threads: int | None, prompt_tokens: int | None, gen_tokens: int | None, db_url: str | None) -> None:
    """Load benchmark outputs that were run by hand, so they join results, compare and dashboards.

    Every file must parse (else nothing is stored, exit 2). Tests become jobs of one run of kind ingest.
    """
    from farm.ingest import ingest, parse_file

    cell = (prompt_tokens, gen_tokens) if prompt_tokens is not None and gen_tokens is not None else None
    for path in files:  # parse before opening the store: a bad file costs nothing
        parse_file(backend, path, cell)
    store = open_store(db_url)
    done = ingest(store, backend, list(files), device=device, model=model, quant=quant, profile=profile,
                  threads=threads, cell=cell)
    console.print(results_table(store.results_frame(done.run_id), title=f"run {done.run_id} (ingest)"))
    for note in done.skipped:
        console.print(f"skipped {escape(note)}")
    console.print(f"run {done.run_id}: {done.jobs} tests, {done.rows} repetitions stored")
