"""The `tuner` command: a thin typer shell over the library.

Each command parses its options, calls one library function, renders the result
(table or --json) and maps errors to the exit codes in tuner.errors.  No logic that
a test would want to reach lives here.
"""
from __future__ import annotations

import sys
from typing import Optional

import typer

from . import errors, render
from .errors import TunerError
from .inputs import check_positive, check_role, parse_target

EXIT_CODES_HELP = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in errors.EXIT_CODES.items()) + "."

app = typer.Typer(
    name="tuner",
    help="Take a Linux host to a verified million concurrent TCP connections: find the "
         "limit that binds first, change exactly what a target needs (reversibly), and "
         "prove it with a probe.\n\n" + EXIT_CODES_HELP,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

TARGET_HELP = "Target concurrent connections (1000000, 1_000_000 or 1M)."
ROLE_HELP = ("loopback: both ends on this host (two sockets each, the default); server: "
             "accepted sockets only; client: outbound sockets only.")
NETNS_HELP = "Read per-namespace knobs inside this network namespace (ip netns)."
JSON_HELP = "Print JSON (a stable, documented schema) instead of a table."


@app.callback()
def _tuner() -> None:
    """Keeps `tuner` a group of subcommands even while only some exist."""


def _emit(text: str) -> None:
    typer.echo(text)


@app.command()
def report(
    target: Optional[str] = typer.Option(None, "--target", "-n", metavar="N", help=TARGET_HELP),
    role: str = typer.Option("loopback", "--role", metavar="ROLE", help=ROLE_HELP),
    netns: Optional[str] = typer.Option(None, "--netns", metavar="NAME", help=NETNS_HELP),
    destinations: int = typer.Option(1, "--destinations",
                                     help="Distinct server ip:port the clients connect to."),
    source_dev: Optional[str] = typer.Option(
        None, "--source-dev", metavar="DEV", help="Interface whose addresses outbound sockets use "
                                   "(default: lo for loopback, all non-loopback ones for client)."),
    wide: bool = typer.Option(False, "--wide", help="Add a why column for every knob "
                                                    "(by default only rows needing attention explain themselves)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """How many connections this host can hold now, which limit binds first, and what a
    target needs. Exits 3 when --target is given and not reachable with current settings."""
    from . import report as report_mod

    n = parse_target(target)
    check_role(role)
    check_positive("--destinations", destinations)
    result = report_mod.build(n, role, netns, destinations, source_dev)
    _emit(render.to_json(result.to_dict()) if json_out else render.report_text(result, wide=wide))
    if result.reachable is False:
        raise typer.Exit(errors.EXIT_SHORT)


def main(argv: Optional[list] = None) -> int:
    """Entry point: one-line errors with documented exit codes, never a traceback."""
    try:
        # standalone_mode=False: typer returns Exit codes instead of exiting, and lets
        # usage errors reach us so they print as one line.
        rv = app(args=argv, prog_name="tuner", standalone_mode=False)
        return rv if isinstance(rv, int) else errors.EXIT_OK
    except TunerError as e:
        print(f"tuner: error: {e}", file=sys.stderr)
        return e.exit_code
    except typer.TyperException as e:  # typer's (vendored click) usage errors
        if type(e).__name__ == "NoArgsIsHelpError":
            e.show()
            return errors.EXIT_USAGE
        ctx = getattr(e, "ctx", None)
        where = f"tuner {ctx.info_name} --help" if ctx is not None and ctx.parent else "tuner --help"
        print(f"tuner: error: {e.format_message()} (see '{where}')", file=sys.stderr)
        return errors.EXIT_USAGE if e.exit_code == 2 else e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print("tuner: aborted, nothing was changed", file=sys.stderr)
        return errors.EXIT_FAILED
    except KeyboardInterrupt:
        print("tuner: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return errors.EXIT_OK


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
