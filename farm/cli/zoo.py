"""`farm zoo`: list and show architecture cards, build their synthetic GGUF files, register user files."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from farm.cli._common import plain_console, styled
from farm.errors import ConfigError

command = click.Group("zoo", help="Architecture cards of real SLMs and their synthetic-weight GGUF files.")


def _console() -> Console:
    # Wide enough that the table is not squeezed when output is captured (CliRunner, pipes).
    return plain_console(width=200, soft_wrap=True)


def _human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.{2 if unit == 'B' else 1}f}{unit}"
    return str(n)


def _short(text: str, width: int = 64) -> str:
    """First sentence, cut to `width`: the table shows the gist, `farm zoo show` the whole reason."""
    first = " ".join(text.split()).split(". ")[0].rstrip(".")
    return first if len(first) <= width else first[: width - 1].rstrip() + "…"


def _parse_sets(sets: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"--set {item!r}: expected field=value, e.g. --set n_layers=20")
        out[key.strip()] = value.strip()
    return out


@command.command("list")
def list_cmd() -> None:
    """All cards: published vs computed parameters, shape, and whether the engine runs them."""
    from farm.zoo.cards import list_cards

    table = Table(title="farm model zoo")
    for col in ("name", "params pub.", "computed", "Δ", "layers", "d_model", "heads/kv", "ffn", "vocab"):
        table.add_column(col, justify="left" if col == "name" else "right")
    table.add_column("runnable / why not")
    for card in list_cards():
        a, n = card.architecture, card.n_params()
        pub = card.params_published_count
        delta = f"{(n - pub) / pub * 100:+.1f}%" if pub else ""
        if not card.runnable:
            status = styled("[red]no[/]: {why}", why=_short(card.unsupported or ""))
        elif card.approximation:
            status = styled("[yellow]approx.[/]: {why}", why=_short(card.approximation))
        else:
            status = styled("[green]yes[/]")
        table.add_row(
            card.name, card.params_published or "-", _human(n), delta, str(a.n_layers), str(a.d_model),
            f"{a.n_heads}/{a.n_kv_heads}", str(a.d_ff), str(a.vocab_size), status,
        )  # fmt: skip
    _console().print(table)


@command.command("show")
@click.argument("card")
@click.option("--json", "as_json", is_flag=True, help="Print the card as JSON.")
def show_cmd(card: str, as_json: bool) -> None:
    """One card (NAME or NAME[field=value,...]) with its memory figures."""
    from farm.zoo.arch import QUANTS
    from farm.zoo.cards import load_card
    from farm.zoo.recipe import RECIPE_NAME

    c = load_card(card)
    if as_json:
        click.echo(json.dumps(c.model_dump(mode="json") | {"n_params": c.n_params()}, indent=2))
        return
    a, out = c.architecture, _console()
    out.print(styled("[bold]{name}[/]  {hf}", name=c.name, hf=c.hf_id or ""))
    out.print(f"source: {c.source}")
    pub = c.params_published or "-"
    out.print(f"params: published {pub}, computed {_human(c.n_params())} ({c.n_params():,})")
    if c.params_note:
        out.print(f"  note: {c.params_note.strip()}")
    for key, value in a.model_dump().items():
        out.print(f"  {key:16} {value}")
    out.print(f"  {'head_dim (eff.)':16} {a.dim_head}")
    sizes = ", ".join(f"{q} {a.weight_bytes(q) / 2**20:,.0f} MiB" for q in QUANTS)
    out.print(f"weights: {sizes}")
    out.print(f"recipes: {', '.join(QUANTS[:8])}: llama-quantize --pure; {', '.join(QUANTS[8:])}: {RECIPE_NAME}")
    out.print(f"KV cache (f16) at context {a.context_length}: {a.kv_cache_bytes(a.context_length) / 2**20:,.0f} MiB")
    out.print(f"runnable: {'yes' if c.runnable else 'no'}")
    for label, text in (("unsupported", c.unsupported), ("approximation", c.approximation)):
        if text:
            out.print(f"{label}: {text.strip()}")
    if c.extra:
        out.print(f"published fields not modelled: {json.dumps(c.extra)}")
    if c.notes:
        out.print(f"notes: {c.notes.strip()}")


@command.command("build")
@click.argument("card")
@click.option("--quant", default="q4_0", show_default=True,
              help="f32 | f16 | bf16 | q8_0 | q4_0 | q4_1 | q5_0 | q5_1 (--pure), or a k-quant mix: q2_k | q3_k_s | "
                   "q3_k_m | q3_k_l | q4_k_s | q4_k_m | q5_k_s | q5_k_m | q6_k (llama-quantize's per-tensor recipe)")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the synthetic weights.")
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE", help="Vary the architecture (repeatable).")
@click.option("--verify", is_flag=True, help="Re-hash a cached file instead of trusting its sidecar.")
def build_cmd(card: str, quant: str, seed: int, sets: tuple[str, ...], verify: bool) -> None:
    """Build (or reuse) the synthetic GGUF of CARD; prints path, size and sha256."""
    from farm.zoo.cache import ensure_model
    from farm.zoo.cards import load_card
    from farm.zoo.writer import recipe_text

    c = load_card(card).with_overrides(**_parse_sets(sets))
    m = ensure_model(c, quant, seed, verify=verify)
    click.echo(f"name:     {m.name}")
    click.echo(f"path:     {m.path}")
    click.echo(f"size:     {m.size} ({m.size / 2**20:.1f} MiB)")
    click.echo(f"sha256:   {m.sha256}")
    click.echo(f"n_params: {m.n_params}")
    click.echo(f"recipe:   {recipe_text(quant)}")
    if m.approximation:
        click.echo(f"approximation: {' '.join(m.approximation.split())}")


@command.command("add")
@click.argument("name")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--sha256", default=None, help="Expected sha256; a file with other content is refused.")
def add_cmd(name: str, path: str, sha256: str | None) -> None:
    """Register a GGUF file as NAME; sweeps refer to it as `file: NAME`."""
    from farm.zoo.files import register_file

    m = register_file(name, path, sha256)
    click.echo(f"registered {m.name}: {m.path}")
    click.echo(f"size {m.size}, sha256 {m.sha256}, {_human(m.n_params)} params, quant {m.quant or 'other'}")


@command.command("files")
def files_cmd() -> None:
    """The registered user files."""
    from farm.zoo.files import registered_files

    table = Table(title="registered model files")
    for col in ("name", "path", "size", "sha256"):
        table.add_column(col)
    for e in registered_files():
        table.add_row(e["name"], e["path"], str(e.get("size", "")), str(e.get("sha256", ""))[:16])
    _console().print(table)


@command.command("import")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--name", default=None, help="Register the file under NAME (sweeps then say `file: NAME`).")
def import_cmd(path: str, name: str | None) -> None:
    """Read a GGUF: architecture, tensor types, the llama-quantize name of its mix, which backend runs it."""
    from pathlib import Path

    from farm.backends import BACKENDS
    from farm.backends.prebuilt import PrebuiltBackend
    from farm.zoo.mix import read_gguf

    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such file")
    info = read_gguf(path)
    click.echo(f"file:         {info.path}")
    click.echo(f"architecture: {info.arch}")
    click.echo(f"name:         {info.name}")
    click.echo(f"params:       {_human(info.n_params)} ({info.n_params:,})")
    click.echo(f"mix:          {info.label.upper()}")
    if info.note:
        click.echo(f"  note: {info.note}")
    total = info.n_params or 1
    for t, n in info.type_params().items():
        count = sum(1 for x in info.tensors if x.type == t)
        click.echo(f"  {t:8} {count:4d} tensors  {n / total * 100:5.1f}% of weights")
    for backend in BACKENDS.names():
        if backend == "sleep":
            continue
        cls = BACKENDS.get(backend)
        if issubclass(cls, PrebuiltBackend):
            click.echo(f"{backend + ':':13} runs its own model format (option model_dir), not GGUF")
            continue
        why = cls.cannot_run(info.arch, info.types)
        click.echo(f"{backend + ':':13} {'runs it' if why is None else 'cannot run it: ' + why}")
    if name:
        from farm.zoo.files import register_file

        m = register_file(name, path)
        click.echo(f"registered {m.name}: sha256 {m.sha256}")
