"""Entry point of the `farm` command: builds the group and maps FarmError to exit codes in one place."""

from __future__ import annotations

import importlib
import pkgutil
import signal
import sys

import click
from rich.console import Console

from farm import __version__
from farm.errors import FarmError

err_console = Console(stderr=True, highlight=False, markup=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="farm")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Benchmark small language models on phones and edge boards."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _load_commands() -> None:
    import farm.cli as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "main":
            continue
        module = importlib.import_module(f"farm.cli.{info.name}")
        for command in [getattr(module, "command", None), *getattr(module, "commands", [])]:
            if isinstance(command, click.Command):
                cli.add_command(command)


_load_commands()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; FarmErrors become one line on stderr and their exit code."""
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here, Ctrl-C is KeyboardInterrupt
    debug = "--debug" in args
    try:
        rv = cli.main(args=args, prog_name="farm", standalone_mode=False)
        if isinstance(rv, int) and rv:  # ctx.exit(code) returns the code in non-standalone mode
            sys.exit(rv)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except FarmError as exc:
        if debug:
            err_console.print_exception()
        click.echo(f"error: {exc}", err=True)  # one unwrapped line, whatever the terminal width
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
