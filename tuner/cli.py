"""The `tuner` command: a thin typer shell over the library.

Each command parses its options, calls the library (tuner.assess, tuner.apply,
tuner.probing.run, ...), renders the result (table or --json) and maps errors to the exit
codes in tuner.host.errors.  The one set of rules kept here is about the command line
itself: which `tuner probe` options belong to which end of a split probe (--serve,
--connect), decided from which options were given, which only typer's context knows;
everything a result depends on lives in the library.
"""
from __future__ import annotations

import inspect
import os
import re
import sys
from dataclasses import dataclass, fields
from typing import Dict, FrozenSet, List, Optional

import typer

# Only what every command needs is imported here: each command imports its own modules
# (render, the model, pyroute2's netlink messages, rich for live progress) when it runs,
# so `tuner --help` and `tuner report --json` pay for nothing else
# (bench/bench_startup.py measures both).
from tuner.host import errors
from . import __version__, inputs
from tuner.host.errors import TunerError
from .inputs import check_positive, check_role, parse_source_net, parse_target, parse_workers
from tuner.host.netns import check_name as check_netns_name, check_syntax as check_netns_syntax

EXIT_CODES_HELP = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in errors.EXIT_CODES.items()) + "."

app = typer.Typer(
    name="tuner",
    help="Take a Linux host to a verified million concurrent TCP connections: find the "
         "limit that binds first, change exactly what a target needs (reversibly), and "
         "prove it with a probe.\n\n" + EXIT_CODES_HELP,
    # --install-completion / --show-completion (bash, zsh, fish), and answers to the
    # shell's _TUNER_COMPLETE requests. Costs no start-up: typer.main imports its
    # completion module either way; this only registers the shells and two options.
    add_completion=True,
    no_args_is_help=True,
    # -h as well as --help, on every command (click offers only --help by default).
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

TARGET_HELP = "Target concurrent connections (1000000, 1_000_000 or 1M)."
ROLE_HELP = ("loopback: both ends on this host (two sockets each, the default); server: "
             "accepted sockets only; client: outbound sockets only.")
NETNS_HELP = "Read per-namespace knobs inside this network namespace (ip netns)."
JSON_HELP = "Print JSON (a stable, documented schema) instead of a table."
COST_HELP = ("A step run of this service (tuner probe --connect URL -n N --step K --json > FILE): its "
             "measured memory per connection adds the memory row (where the service's memory limit "
             "stops it) to the minimum.")


def _netns_option(help_text: str):
    """Every --netns is a name, never a path, checked as it is parsed; each command then
    checks that `ip netns list` shows it (check_netns_name) before any namespace call."""
    return typer.Option(None, "--netns", metavar="NAME", help=help_text,
                        callback=lambda value: check_netns_syntax(value))


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"tuner {__version__}")
        raise typer.Exit(errors.EXIT_OK)


def _no_color(value: bool) -> None:
    if value:
        # Here: style loads only when colour is asked about (--help's start-up time).
        from . import style

        style.disable()


@app.callback()
def _tuner(version: bool = typer.Option(False, "--version", "-V", is_eager=True, callback=_print_version,
                                        help="Print the version and exit."),
           no_color: bool = typer.Option(False, "--no-color", callback=_no_color,
                                         help="No colour for status words (also: NO_COLOR set; "
                                              "output that is not a terminal never has any).")) -> None:
    """Keeps `tuner` a group of subcommands, with options of its own."""


def _emit(text: str) -> None:
    typer.echo(text)


def _emit_statuses(text: str) -> None:
    """Human output whose status words are coloured on a terminal (tuner.style)."""
    # Here: style loads only for coloured output (--help's start-up time).
    from . import style

    typer.echo(style.statuses(text) if style.enabled() else text)


def _width(err: bool = False):
    """The terminal's width for human output on stdout (or stderr); None when piped, so
    scripts and pagers get every line whole (tuner.fit)."""
    # Here: fit loads only when output is laid out (--help's start-up time).
    from .fit import terminal_width

    return terminal_width(sys.stderr if err else sys.stdout)


def _client_net(prefix: Optional[str], role: str, netns: Optional[str]) -> Optional[dict]:
    """report --client-net: checked (exit 2), then the route back to it read."""
    if prefix is None:
        return None
    # Here: only --client-net needs ipaddress and the routes (start-up time).
    import ipaddress

    from . import assess

    if role != "server":
        raise errors.UsageError("--client-net asks whether a server routes the clients' prefix back; "
                         "add --role server")
    try:
        ipaddress.ip_network(prefix.strip(), strict=False)
    except ValueError:
        raise errors.UsageError(f"--client-net {prefix!r} is not a network (e.g. fd00:77:1::/64)") from None
    return assess.client_route(netns, prefix.strip())


@app.command()
def report(
    target: Optional[int] = typer.Option(None, "--target", "-n", metavar="N", help=TARGET_HELP,
                                         parser=inputs.TARGET),
    role: str = typer.Option("loopback", "--role", metavar="ROLE", help=ROLE_HELP),
    netns: Optional[str] = _netns_option(NETNS_HELP),
    destinations: int = typer.Option(1, "--destinations", metavar="N", parser=inputs.DESTINATIONS,
                                     help="Distinct server ip:port the clients connect to."),
    source_dev: Optional[str] = typer.Option(
        None, "--source-dev", metavar="DEV", help="Interface whose addresses outbound sockets use "
                                   "(default: lo for loopback, all non-loopback ones for client)."),
    wide: bool = typer.Option(False, "--wide", help="Add a why column for every knob "
                                                    "(by default only rows needing attention explain themselves)."),
    client_net: Optional[str] = typer.Option(
        None, "--client-net", metavar="PREFIX",
        help="With --role server: the clients' AnyIP prefix (tuner apply --anyip-net on the "
             "load hosts); says whether replies to it are routed back to them."),
    tls: bool = typer.Option(False, "--tls", help="With --role client: the connections are TLS "
                             "(tuner probe --connect with a TLS scheme): each also costs the probe's "
                             "TLS state in user memory, as measured, in the memory estimate."),
    tls_version: Optional[str] = typer.Option(None, "--tls-version", metavar="1.2|1.3",
                                              help="With --tls: the TLS version the connections speak "
                                                   "(its measured state is counted; default: the dearer "
                                                   "version's). Implies --tls."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """How many connections this host can hold now, which limit binds first, and what a
    target needs: the verdict and the one next command first, then the knob table
    (knob, current, needed, status when the whole one does not fit the terminal). Exits
    3 when --target is given and not reachable with current settings."""
    # Here: a command loads its own modules when it runs (everyone's start-up time).
    from . import assess, render

    n = parse_target(target)
    check_role(role)
    tls = tls or tls_version is not None
    if tls and role != "client":
        raise errors.UsageError("--tls is for --role client (the probe's own TLS state per connection)")
    user_tls = _tls_state(tls_version) if tls else None
    check_positive("--destinations", destinations)
    check_netns_name(netns)
    back = _client_net(client_net, role, netns)
    result = assess.build(n, role, netns, destinations, source_dev, user_tls=user_tls)
    if json_out:
        _emit(render.to_json({**result.to_dict(), **({"client_net": back} if back else {})}))
    else:
        _emit_statuses(render.report_text(result, wide=wide, width=_width()))
        if back:
            _emit(assess.client_route_text(back))
    if result.reachable is False:
        raise typer.Exit(errors.EXIT_SHORT)


def _tls_state(version: Optional[str]):
    """(version, bytes per held connection, asked) of the probe's TLS state: the version
    asked, else the dearer one."""
    from probes.protocols.tls import HELD_BYTES   # only for report --tls
    if version is None:
        dearer = max(HELD_BYTES, key=HELD_BYTES.get)
        return dearer, HELD_BYTES[dearer], False
    if version not in HELD_BYTES:
        raise errors.UsageError(f"--tls-version {version!r}: one of {', '.join(sorted(HELD_BYTES))}")
    return version, HELD_BYTES[version], True


@app.command()
def metrics(
    textfile: Optional[str] = typer.Option(
        None, "--textfile", metavar="DIR",
        help="Write DIR/tuner.prom atomically for node_exporter's textfile collector, then exit "
             "(run it from a cron job or systemd timer)."),
    listen: Optional[str] = typer.Option(
        None, "--listen", metavar="ADDR:PORT",
        help="Serve /metrics on ADDR:PORT (e.g. 127.0.0.1:9858; port 0 picks a free one), "
             "reading the host at each scrape, until SIGTERM. Only ADDR is bound."),
    target: Optional[int] = typer.Option(None, "--target", "-n", metavar="N", parser=inputs.TARGET,
                                         help=TARGET_HELP + " Adds tuner_target_reachable."),
    role: str = typer.Option("loopback", "--role", metavar="ROLE", help=ROLE_HELP),
    netns: Optional[str] = _netns_option(NETNS_HELP),
    destinations: int = typer.Option(1, "--destinations", metavar="N", parser=inputs.DESTINATIONS,
                                     help="Distinct server ip:port the clients connect to."),
    source_dev: Optional[str] = typer.Option(
        None, "--source-dev", metavar="DEV", help="Interface whose addresses outbound sockets use."),
    pid: List[int] = typer.Option([], "--pid", metavar="PID", parser=inputs.PID,
                                  help="Add a service's own figures (as tuner diagnose): this "
                                       "process (repeatable)."),
    port: Optional[int] = typer.Option(None, "--port", metavar="PORT", parser=inputs.PORT,
                                       help="... the processes listening on this TCP port "
                                            "(looked up in --netns when given)."),
    unit: Optional[str] = typer.Option(None, "--unit", metavar="NAME",
                                       help="... the processes of this systemd unit."),
) -> None:
    """The report's figures as Prometheus metrics: capacity, the binding limit, what each
    limit allows and how much of it is in use. Prints the text format without --textfile
    or --listen. Every metric is listed in the man page (man tuner-metrics, METRICS)."""
    # Here: a command loads its own modules when it runs (everyone's start-up time).
    from . import metrics as metrics_mod

    if textfile is not None and listen is not None:
        raise errors.UsageError("--textfile and --listen are two ways to export: give one")
    check_role(role)
    check_positive("--destinations", destinations)
    req = metrics_mod.Request(parse_target(target), role, netns, destinations, source_dev,
                              tuple(pid), port, unit)
    if listen is not None:
        metrics_mod.parse_listen(listen)
    if textfile is not None:
        metrics_mod.check_textfile_dir(textfile)
    # Bad --netns or --source-dev: refused before serving anything, like the report. The
    # one-shot modes export this very reading.
    scrape = metrics_mod.read(req, strict=True)
    if listen is not None:
        metrics_mod.serve(listen, req, announce=lambda line: typer.echo(line, err=True))
    elif textfile is not None:
        metrics_mod.write_textfile(textfile, req, first=scrape)
    else:
        typer.echo(metrics_mod.exposition(req, first=scrape), nl=False)


JOURNAL_HELP = ("Write-ahead journal of changes (default /var/lib/tuner/journal.json; "
                "env TUNER_JOURNAL).")


def _confirm_on_terminal(plan, err: bool = False) -> None:
    """A serious tool does not change a host nobody confirmed: no terminal and no --yes
    is refused (exit 2) rather than assumed. With --json the question (and the plan it
    asks about) go to stderr, so stdout stays one JSON document. A "no" ends the command
    with EXIT_DECLINED (6): nothing changed, and nothing failed."""
    # Here: a command loads its own modules when it runs (everyone's start-up time).
    from . import render

    _need_terminal()
    if err:
        typer.echo(render.plan_text(plan, _width(err=True)), err=True)
    if not typer.confirm(f"Apply these {len(plan.changes)} change(s)?", default=False, err=err):
        raise typer.Abort()


def _need_terminal() -> None:
    if not sys.stdin.isatty():
        raise errors.UsageError("refusing to change this host without confirmation: no "
                                "terminal to ask on; review with --dry-run, then pass --yes")


def _confirm_revert(preview, err: bool = False) -> None:
    """revert asks like apply: what it would restore (the dry run's table), then the
    question; --yes skips both."""
    # Here: a command loads its own modules when it runs (everyone's start-up time).
    from . import render, revert as revert_mod

    _need_terminal()
    n = sum(r.action == revert_mod.WOULD_RESTORE for r in preview.rows)
    typer.echo(render.revert_text(preview, _width(err=err), preview=True), err=err)
    if not typer.confirm(f"Restore these {n} setting(s)?", default=False, err=err):
        raise typer.Abort()


@app.command()
def apply(
    target: int = typer.Option(..., "--target", "-n", metavar="N", help=TARGET_HELP,
                               parser=inputs.TARGET),
    role: Optional[str] = typer.Option(None, "--role", metavar="ROLE",
                                       help=ROLE_HELP + " With --pid of a process that listens, the "
                                       "default is server."),
    netns: Optional[str] = _netns_option("Change per-namespace knobs inside this network "
                                         "namespace; host-wide knobs are then left alone (and listed)."),
    destinations: int = typer.Option(1, "--destinations", metavar="N", parser=inputs.DESTINATIONS,
                                     help="Distinct server ip:port the clients connect to."),
    pid: List[int] = typer.Option([], "--pid", metavar="PID", parser=inputs.PID, help="Raise RLIMIT_NOFILE of this running "
                                                    "process (repeatable)."),
    alias_dev: Optional[str] = typer.Option(None, "--alias-dev", metavar="DEV",
                                            help="Device to add source-address aliases on."),
    alias_net: Optional[str] = typer.Option(None, "--alias-net", metavar="CIDR",
                                            help="Network the /32 aliases are taken from: a private "
                                                 "one (10/8, 172.16/12, 192.168/16, 100.64/10; "
                                                 "127/8 on lo only)."),
    anyip_net: Optional[str] = typer.Option(
        None, "--anyip-net", metavar="PREFIX",
        help="Make every address of PREFIX a source with one local route (AnyIP; IPv6 "
             "fd00::/8 or private IPv4), instead of aliases: docs/anyip.md. The server must "
             "route PREFIX back to this host."),
    anyip_dev: Optional[str] = typer.Option(None, "--anyip-dev", metavar="DEV",
                                            help="Device the --anyip-net route goes on (default lo)."),
    allow_public_aliases: bool = typer.Option(
        False, "--allow-public-aliases",
        help="Let --alias-net or --anyip-net be a public network you own (never multicast, "
             "0/8, 240/4 or loopback off lo)."),
    shrink_buffers: bool = typer.Option(False, "--shrink-buffers",
                                        help="Lower tcp_rmem/tcp_wmem defaults (not max)."),
    persist: bool = typer.Option(False, "--persist", help="Also write sysctl.d / limits.d "
                                                          "files that apply at boot."),
    unit: Optional[str] = typer.Option(None, "--unit", metavar="UNIT", help="With --persist: systemd unit to "
                                                            "give LimitNOFILE (a drop-in): the "
                                                            "recommended path for a service."),
    user: Optional[str] = typer.Option(
        None, "--user", metavar="NAME",
        help="With --persist: limits.d's nofile lines for this user only (one of this host's), "
             "not every user and root. limits.d reaches login sessions; a service started by "
             "systemd needs --unit."),
    raise_soft: bool = typer.Option(
        False, "--raise-soft",
        help="With --persist: persist the soft RLIMIT_NOFILE at the hard one too. Without "
             "it only the hard limit is raised and the soft one stays 1024 (select() handles "
             "no descriptor above 1023; see systemd.exec(5)): programs raise their own."),
    root_dir: str = typer.Option("/", "--root-dir", metavar="DIR",
                                 help="Root of the tree --persist writes into (default /): "
                                      "prepare files for another system image, or review them."),
    source_net: Optional[str] = typer.Option(
        None, "--source-net", metavar="CIDR", parser=parse_source_net,
        help="Plan for clients bound to the addresses of CIDR, as 'tuner probe --source-net' "
             "binds them ('none': the one the kernel picks), instead of the local addresses "
             "counted; the probe's fixes pass it."),
    journal: Optional[str] = typer.Option(None, "--journal", metavar="PATH", envvar="TUNER_JOURNAL",
                                          help=JOURNAL_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan and stop."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before changing."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Change exactly what N needs (only raising), through a crash-safe journal, after
    showing the plan and asking (--yes skips the question; without a terminal it is
    required). Exits 1 when a write failed (earlier changes rolled back), 3 when the
    target is still not reachable afterwards, 6 when you answer no."""
    # Here: a command loads its own modules when it runs (everyone's start-up time).
    from . import apply as apply_mod, render
    from .plan import Request

    role, role_chosen = apply_mod.role_for(role, pid)
    req = Request(parse_target(target), role, netns, destinations, tuple(pid), alias_dev,
                  alias_net, shrink_buffers, persist, root_dir, unit,
                  source_net=parse_source_net(source_net), allow_public_aliases=allow_public_aliases,
                  user=user, raise_soft=raise_soft, anyip_net=anyip_net, anyip_dev=anyip_dev,
                  role_chosen=role_chosen)
    outcome = apply_mod.run(
        req, journal, dry_run,
        show=(lambda plan: None) if json_out else (lambda plan: _emit(render.plan_text(plan, _width()))),
        confirm=(lambda plan: None) if yes else (lambda plan: _confirm_on_terminal(plan, json_out)),
        argv=sys.argv[1:])
    if json_out:
        _emit(render.to_json(outcome.to_dict()))
    elif not dry_run:
        _emit(render.apply_text(outcome, _width()))
    elif outcome.application:
        _emit(render.application_text(outcome, _width()))
    if outcome.after and outcome.after["reachable"] is False:
        raise typer.Exit(errors.EXIT_SHORT)


@app.command()
def revert(
    force: bool = typer.Option(False, "--force", help="Restore originals even where a value "
                                                      "changed since tuner wrote it."),
    journal: Optional[str] = typer.Option(None, "--journal", metavar="PATH", envvar="TUNER_JOURNAL",
                                          help=JOURNAL_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be restored."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before restoring."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Undo what apply changed, newest first, after showing what it will restore and
    asking (--yes skips the question; without a terminal it is required). Exits 1 unless
    everything is restored (values changed by someone else since are skipped without
    --force), 6 when you answer no."""
    # Here: a command loads its own modules when it runs (everyone's start-up time).
    from . import render, revert as revert_mod

    outcome = revert_mod.run(journal, force, dry_run,
                             confirm=None if yes else (lambda preview: _confirm_revert(preview, json_out)))
    _emit(render.to_json(outcome.to_dict()) if json_out else render.revert_text(outcome, _width()))
    if not outcome.complete:
        raise typer.Exit(errors.EXIT_FAILED)


@app.command()
def status(
    journal: Optional[str] = typer.Option(None, "--journal", metavar="PATH", envvar="TUNER_JOURNAL",
                                          help=JOURNAL_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Whether what apply changed and persisted is still in effect: each change the
    journal lists against its value now (drift named), each persisted file, and whether
    a file applied after it at boot (sysctl.d, limits.d, a unit's drop-ins) overrides
    what it sets. Changes nothing. Exits 0 when everything is in effect (or tuner changed
    nothing), 1 otherwise (or when the journal cannot be trusted)."""
    # Here: a command loads its own modules when it runs (everyone's start-up time).
    from . import render, status as status_mod

    result = status_mod.build(journal)
    if json_out:
        _emit(render.to_json(result.to_dict()))
    else:
        _emit_statuses(render.status_text(result, _width()))
    if not result.in_effect:
        raise typer.Exit(errors.EXIT_FAILED)


def _schemes_help() -> str:
    """--connect's URL forms, from the protocol registry."""
    from probes import protocols  # the registry: read when the probe's options are

    forms = []
    for s in protocols.schemes():
        form = " or ".join((*s.aliases, s.usage))
        forms.append(form + (f" ('{s.peer}')" if s.peer else ""))
    return ", ".join(forms)


def _option_help(option) -> str:
    from probes import protocols  # the registry: read when the probe's options are

    return f"With --connect {' or '.join(s.name + '://' for s in protocols.owners(option))}: {option.help}"


class _ProbeCommand(typer.core.TyperCommand):
    """`tuner probe`, whose protocol options (and the help naming the schemes) come from
    the protocol registry (probes/protocols).  They join the command when click first
    asks for its parameters or help (parsing it, --help, the man page), after --expect:
    every other command (`tuner report --json`) starts without loading the registry.
    The callback receives them as keywords."""

    _registry_read = False

    @property
    def params(self):
        if not self._registry_read:
            self._registry_read = True
            self._read_registry()
        return self._params

    @params.setter
    def params(self, value):
        self._params = value

    @property
    def help(self):
        self.params
        return self._help

    @help.setter
    def help(self, value):
        self._help = value

    def get_short_help_str(self, limit: int = 45) -> str:
        # `tuner --help` lists the command by its first words, before any scheme is named.
        from typer._click.utils import make_default_short_help  # typer vendors its click: the one it uses

        return self.short_help or make_default_short_help(self._help, limit)

    def _read_registry(self) -> None:
        from probes import protocols  # the registry: read when the probe's options are
        from typer.main import get_click_param  # typer's own Option -> click option, as for the others
        from typer.models import ParamMeta

        by_name = {p.name: p for p in self._params}
        by_name["connect"].help = by_name["connect"].help.format(schemes=_schemes_help())
        by_name["expect"].help += "".join(_option_help(o) for o in protocols.options() if o.shared
                                          and o.name == "expect")
        self._help = self._help.format(schemes=", ".join(s.name + "://" for s in protocols.schemes()
                                                         if not s.aliases))
        added = []
        for o in protocols.options():
            if o.shared:
                continue
            annotation = List[o.kind] if o.repeatable else (o.kind if o.default is not None else Optional[o.kind])
            # A number is read like every other numeric option (inputs.Number).
            parser = {} if o.bounds is None else {"parser": inputs.Number(o.flag, o.kind.__name__, *o.bounds,
                                                                             unit=o.unit)}
            default = typer.Option([] if o.repeatable else o.default, o.flag, metavar=o.metavar, help=_option_help(o),
                                   **parser)
            added.append(get_click_param(ParamMeta(name=o.name, default=default, annotation=annotation))[0])
        at = [p.name for p in self._params].index("expect") + 1
        self._params[at:at] = added


def _signature_without_keywords(fn):
    """typer reads a command's options from its signature, and has none for **keywords:
    the probe's protocol options arrive there, declared by _ProbeCommand instead."""
    sig = inspect.signature(fn)
    fn.__signature__ = sig.replace(parameters=[p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD])
    return fn


@app.command(cls=_ProbeCommand)
@_signature_without_keywords
def probe(
    ctx: typer.Context,
    connections: int = typer.Option(100000, "--connections", "-n", metavar="N", parser=inputs.CONNECTIONS,
                                    help="Connections to open, verify and hold (1M works)."),
    hold: float = typer.Option(0.0, "--hold", metavar="SECONDS", parser=inputs.HOLD,
                               help="Hold every verified connection this long before closing."),
    rate: Optional[float] = typer.Option(None, "--rate", metavar="RATE", parser=inputs.RATE,
                                         help="New connections per second, all workers together "
                                              "(default: as fast as the kernel accepts)."),
    workers: str = typer.Option("auto", "--workers", metavar="auto|K", parser=inputs.WORKERS,
                                help="Worker processes; auto fits each in RLIMIT_NOFILE."),
    source_net: Optional[str] = typer.Option(
        None, "--source-net", metavar="CIDR", parser=parse_source_net,
        help="Client source addresses (IP_BIND_ADDRESS_NO_PORT), or 'none' to let the kernel "
             "pick (default 127.0.0.0/8; with --connect the local addresses inside CIDR, e.g. "
             "aliases from tuner apply, default kernel-chosen)."),
    port: Optional[int] = typer.Option(None, "--port", metavar="PORT", parser=inputs.PORT,
                                       help="First listener port (default: outside "
                                            "ip_local_port_range)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", metavar="SECONDS", parser=inputs.TIMEOUT,
                                            help="Give up establishing and verifying after this "
                                                 "long (default 30 s + 1 s per 10,000)."),
    netns: Optional[str] = _netns_option("Run the probe inside this network namespace."),
    force: bool = typer.Option(False, "--force", help="Run even when the capacity model says "
                                                      "N cannot be reached."),
    serve: Optional[str] = typer.Option(
        None, "--serve", metavar="ADDR:PORT",
        help="Server side only: accept clients on ADDR:PORT (':PORT' for all addresses), run the "
             "wire exchange (man tuner-probe, WIRE PROTOCOL), hold them; report per client address. Ends on "
             "SIGTERM/SIGINT, --timeout, or once --expect have verified and then their clients "
             "have closed or --hold seconds passed."),
    connect: Optional[str] = typer.Option(
        None, "--connect", metavar="URL",
        help="Client side only: open --connections to URL and verify each twice (at open and at "
             "the end of --hold): {schemes}; IPv6 as [ADDR]:PORT."),
    expect: Optional[str] = typer.Option(
        None, "--expect", metavar="N|TEXT",
        help="With --serve: connections to verify (N); one that fails gives its slot back, more "
             "wait in the accept queue and are reset once N verified. Exit 0 only when N verified. "
             ),
    step: Optional[int] = typer.Option(
        None, "--step", metavar="K", parser=inputs.STEP,
        help="With --connect: open K more connections per step up to N; after each, once the "
             "service settled, a row: connections held, the service's memory (PSS) and its sockets' "
             "kernel memory, its CPU, and the latency of one exchange on a sample of held ones."),
    settle: float = typer.Option(1.0, "--settle", metavar="SECONDS", parser=inputs.SETTLE,
                                 help="With --step: wait this long after a step opened before its row."),
    ping_every: Optional[float] = typer.Option(
        None, "--ping-every", metavar="SECONDS", parser=inputs.PING_EVERY,
        help="With --connect: exchange once on every held connection per SECONDS, spread evenly "
             "(an HTTP request, a WebSocket ping, a Redis PING, --send, tuner's ENQ), for the whole "
             "hold; latency percentiles per step and for the hold."),
    max_p99: Optional[float] = typer.Option(
        None, "--max-p99", metavar="MS", parser=inputs.MAX_P99,
        help="With --step: end the ramp at the first step whose p99 latency passes MS "
             "milliseconds (exit 3), reporting the last step within it."),
    echo_timeout: float = typer.Option(10.0, "--echo-timeout", metavar="SECONDS", parser=inputs.ECHO_TIMEOUT,
                                       help="With --serve: how long a client has to echo its index."),
    textfile: Optional[str] = typer.Option(
        None, "--textfile", metavar="DIR",
        help="Also write the run's figures to DIR/tuner_probe.prom (atomically) for node_exporter's "
             "textfile collector; the metrics are listed in man tuner-probe (METRICS)."),
    quiet: bool = typer.Option(False, "--quiet", "-q",
                               help="No progress and no plan lines on stderr (errors still "
                                    "are): for cron and scripts that keep the result only."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
    **protocol_options,
) -> None:
    """Prove N concurrent connections, by default with both ends on this host: open them
    across worker processes, send number i on connection i and check the echo, hold them, and report figures and the
    limit that stopped it, if any. Exits 0 when all verified, 3 when refused by
    pre-flight or short, 130 on Ctrl-C. Across hosts: --serve on the server and --connect
    on each load host, speaking tuner's wire exchange (man tuner-probe, WIRE PROTOCOL). Against your own service:
    --connect URL ({schemes}) says which side stalled."""
    check_netns_name(netns)
    opts = ProbeOptions.of(ctx)
    if serve and connect:
        raise errors.UsageError("--serve and --connect are two ends: run one per host")
    if serve:
        _probe_serve(opts)
    if connect:
        _probe_connect(opts)
    _probe_local(opts)


@dataclass(frozen=True)
class ProbeOptions:
    """`tuner probe`'s options as parsed (each by its own parser), typed; `protocol`
    holds the protocol registry's options that were given, `given` the names of the
    options given on the command line (a default is not given)."""

    connections: int
    hold: float
    rate: Optional[float]
    workers: str
    source_net: Optional[str]
    port: Optional[int]
    timeout: Optional[float]
    netns: Optional[str]
    force: bool
    serve: Optional[str]
    connect: Optional[str]
    expect: Optional[str]
    step: Optional[int]
    settle: float
    ping_every: Optional[float]
    max_p99: Optional[float]
    echo_timeout: float
    textfile: Optional[str]
    quiet: bool
    json_out: bool
    protocol: Dict[str, object]
    given: FrozenSet[str]

    @classmethod
    def of(cls, ctx) -> "ProbeOptions":
        from probes import protocols  # the registry: read when the probe runs

        p = ctx.params
        own = {f.name: p[f.name] for f in fields(cls) if f.name not in ("protocol", "given")}
        # A shared option (--expect) is the command's own too: --connect reads it as TEXT.
        protocol = {o.name: list(p[o.name]) if o.repeatable else p[o.name]
                    for o in protocols.options() if o.given(p[o.name])}
        for o in protocols.options():
            if o.file_of and protocol.get(o.name) == "-":
                protocol[o.file_of] = _secret_from_stdin(o, protocols.options(), protocol)
                del protocol[o.name]
        return cls(**own, protocol=protocol, given=frozenset(name for name in p if _given(ctx, name)))


def _secret_from_stdin(option, options, given: dict) -> str:
    """`--password-file -`: the secret from stdin, as `docker login --password-stdin`
    takes it (a secrets manager's output piped in), or asked for without echo when stdin
    is a terminal; either way in no command line."""
    import getpass  # only a secret read from stdin needs it

    from tuner.host import trust   # the text's rules: one home with a file's

    held = next(o for o in options if o.name == option.file_of)
    if held.name in given:
        raise errors.UsageError(f"{held.flag} and {option.flag} both given: give one")
    if sys.stdin is None or sys.stdin.closed:
        raise errors.UsageError(f"{option.flag} -: no stdin to read the password from: pipe it in")
    try:
        if sys.stdin.isatty():
            return getpass.getpass(f"{held.flag.lstrip('-')} for {option.flag} -: ", stream=sys.stderr)
        return trust.secret_text(sys.stdin.buffer.read(trust.SECRET_MAX + 1), f"{option.flag} - (stdin)")
    except trust.UntrustedFile as e:
        raise errors.UsageError(str(e)) from None
    except (EOFError, OSError) as e:
        raise errors.UsageError(f"{option.flag} -: could not read the password from stdin ({e})") from None


def _probe_local(o: ProbeOptions) -> None:
    """`tuner probe` on this host alone: pre-flight, run, the table's fixes, the result."""
    # Here: a command loads its own modules when it runs (everyone's start-up time).
    from tuner.probing import run as probe_run
    from tuner import render

    _refuse_other_ends_options(o, None)
    if o.textfile is not None:   # refused before anything runs, like any bad input
        # Here: metrics loads only for --textfile (start-up time).
        from .metrics import check_textfile_dir
        check_textfile_dir(o.textfile)
    n = parse_target(o.connections, "--connections")
    n_workers = parse_workers(o.workers)
    source_net = parse_source_net(o.source_net) or probe_run.DEFAULT_SOURCE_NET
    pre = probe_run.check(n, o.netns, source_net, n_workers)
    if not pre.ok and not o.force:
        if o.json_out:  # stdout stays one tuner.probe/1 document, the refusal with its reason
            _emit(render.to_json(probe_run.refusal_document(pre)))
        raise TunerError(pre.refusal(), errors.EXIT_SHORT)
    result = probe_run.run_probe(n, pre, hold=o.hold, rate=o.rate, workers=n_workers,
                                 source_net=source_net, port=o.port, timeout=o.timeout,
                                 netns=o.netns, quiet=o.quiet)
    probe_run.add_fixes(result, pre, o.netns)  # each failure's fix from the knob table
    _emit(render.to_json(probe_run.probe_document(pre, result)) if o.json_out
          else render.probe_text(result, pre, _width()))
    if o.textfile is not None:
        # Here: metrics loads only for --textfile (start-up time).
        from .metrics import write_probe_textfile
        write_probe_textfile(o.textfile, result.to_dict())
    raise typer.Exit(result.exit_code)


def _probe_serve(o: ProbeOptions) -> None:
    """`tuner probe --serve` (probes.serve): exit 0 when every expected connection
    verified, 3 when short."""
    # Here: a command loads its own modules when it runs (everyone's start-up time).
    from probes.serve import ServeConfig

    from tuner.probing import run as probe_run
    from tuner import render

    _refuse_other_ends_options(o, "--serve")
    # --hold given (0 included) ends the run at most that long after --expect have
    # verified; with or without it, it ends once their clients have all closed.
    cfg = ServeConfig(listen=o.serve, expect=inputs.EXPECT(o.expect) if o.expect else None,
                      hold=o.hold if "hold" in o.given else None, timeout=o.timeout,
                      echo_timeout=o.echo_timeout, workers=_split_workers(o.workers))
    result = probe_run.run_split(cfg, o.netns, o.quiet)
    _emit(render.to_json(probe_run.serve_document(result)) if o.json_out
          else render.serve_text(result.to_dict(), width=_width()))
    raise typer.Exit(result.exit_code)


def _probe_connect(o: ProbeOptions) -> None:
    """`tuner probe --connect URL` (probes.connect): exit 0 when every requested
    connection verified twice, 3 when short; the first line names the side that stalled."""
    # Here: a command loads its own modules when it runs (everyone's start-up time).
    from probes.connect import ConnectConfig

    from tuner.probing import run as probe_run
    from tuner import render

    _refuse_other_ends_options(o, "--connect")
    cfg = ConnectConfig(target=o.connect, connections=parse_target(o.connections, "--connections"),
                        source_net=None if o.source_net in (None, "none") else o.source_net, rate=o.rate,
                        hold=o.hold, timeout=o.timeout, workers=_split_workers(o.workers), options=o.protocol,
                        step=o.step, settle=o.settle, ping_every=o.ping_every, max_p99=o.max_p99)
    result = probe_run.run_split(cfg, o.netns, o.quiet)
    probe_run.explain_stall(result, o.netns)
    probe_run.add_service_cost(result.to_dict())
    _emit(render.to_json(probe_run.connect_document(result)) if o.json_out
          else render.connect_text(result.to_dict(), _width()))
    raise typer.Exit(result.exit_code)


def _split_workers(workers: str) -> Optional[int]:
    return None if workers == "auto" else parse_workers(workers)


@app.command()
def diagnose(
    pid: List[int] = typer.Option([], "--pid", metavar="PID", parser=inputs.PID,
                                  help="The service's process (repeatable: pre-fork workers)."),
    port: Optional[int] = typer.Option(None, "--port", metavar="PORT", parser=inputs.PORT,
                                       help="The process(es) listening on this TCP port "
                                            "(SO_REUSEPORT workers are summed)."),
    unit: Optional[str] = typer.Option(None, "--unit", metavar="NAME",
                                       help="The processes of this systemd unit (from its cgroup)."),
    netns: Optional[str] = _netns_option("With --port: look for the listener inside this "
                                         "network namespace (ip netns)."),
    target: Optional[int] = typer.Option(None, "--target", "-n", metavar="N", parser=inputs.TARGET,
                                         help="Can the service hold N connections in total? "
                                              "(exit 3 when not)."),
    watch: Optional[float] = typer.Option(None, "--watch", metavar="[SECONDS]", parser=inputs.WATCH,
                                          help="Sample live until Ctrl-C (or for SECONDS; "
                                               "a bare --watch means until Ctrl-C): "
                                               "connections, descriptors, accept queue, and the "
                                               "counters that say a limit is biting."),
    interval: float = typer.Option(1.0, "--interval", metavar="SECONDS", parser=inputs.INTERVAL, help="Seconds between --watch samples."),
    app_limit: Optional[int] = typer.Option(None, "--app-limit", metavar="N", parser=inputs.APP_LIMIT,
                                            help="The application's own connection cap, where "
                                                 "tuner cannot read it (it says so)."),
    cost: Optional[str] = typer.Option(None, "--cost", metavar="FILE", help=COST_HELP),
    wide: bool = typer.Option(False, "--wide", help="Add a why column for every limit."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP + " With --watch: one JSON line per sample."),
) -> None:
    """Why does this running service stall at N connections? Reads the process(es) --
    RLIMIT_NOFILE and descriptors in use, listeners (backlog, accept queue), connections,
    epoll watches, threads, cgroup memory and pids -- in their own network namespace and
    cgroup, and the application's own cap (nginx worker_connections, HAProxy maxconn, ...)
    from its configuration, evaluates every limit for the server role with their numbers,
    and prints the verdict (the minimum over kernel, process and application), the
    table, and the fixes as commands. Exits 0 when the service can take
    --target (or none is given), 3 when it cannot, 2 for a PID/port/unit that does not
    exist or cannot be a server, 4 when reading another user's process needs root."""
    # Here: a command loads its own modules when it runs (everyone's start-up time).
    from tuner.diagnose import evaluate as diagnose_mod
    from tuner import render

    n = target
    if watch is not None:
        # Here: a command loads its own modules when it runs (everyone's start-up time).
        from tuner.diagnose import watch as watch_mod

        pids = diagnose_mod.resolve(pid, port, unit, netns)
        raise typer.Exit(watch_mod.run(pids, n, duration=watch or None, interval=interval,
                                       json_out=json_out, emit=_emit))
    if interval != 1.0:
        raise errors.UsageError("--interval applies to --watch only")
    d = diagnose_mod.diagnose(pid, port, unit, netns, n, app_limit, _cost_rows(cost))
    if json_out:
        _emit(render.to_json(d.to_dict()))
    else:
        # Here: a command loads its own modules when it runs (everyone's start-up time).
        from tuner.diagnose.render import diagnose_text

        _emit_statuses(diagnose_text(d, wide=wide, width=_width()))
    if d.reachable is False:
        raise typer.Exit(errors.EXIT_SHORT)


def _cost_rows(path: Optional[str]) -> Optional[list]:
    """--cost FILE's step rows, or one line saying what is wrong with it (exit 2)."""
    if path is None:
        return None
    from tuner import cost  # only --cost reads a run file

    try:
        return cost.rows_of_run(path)
    except ValueError as e:
        raise errors.UsageError(str(e)) from None


# Options that belong to one end of the probe (or to the local probe), which another
# mode would silently ignore; the protocol options (_connect_only) are --connect's.
def _connect_only() -> dict:
    """{name: flag} of the protocol options (the registry's) and the ramp's, which no
    other mode reads."""
    from probes import protocols  # the registry: read when the probe runs

    return {**{o.name: o.flag for o in protocols.options() if not o.shared}, **_RAMP_OPTIONS}


# --connect's own options beyond the protocol's: the step ramp and the held traffic.
_RAMP_OPTIONS = {"step": "--step", "settle": "--settle", "ping_every": "--ping-every", "max_p99": "--max-p99"}


def _ends_of(name: str) -> str:
    """Without --serve or --connect: the end(s) an option of the ends is for."""
    return {"expect": "--serve or --connect", "echo_timeout": "--serve"}.get(name, "--connect")


def _not_with(mode: Optional[str]) -> dict:
    """{name: flag} of the options `mode` (None: the local probe) does not read."""
    return {
        None: {"expect": "--expect", "echo_timeout": "--echo-timeout", **_connect_only()},
        "--serve": {"connections": "--connections/-n", "rate": "--rate", "port": "--port", "force": "--force",
                    "source_net": "--source-net", "textfile": "--textfile", **_connect_only()},
        "--connect": {"echo_timeout": "--echo-timeout", "textfile": "--textfile"},
    }[mode]


@app.command()
def plot(
    runs: List[str] = typer.Argument(..., metavar="RUN.json...",
                                     help="Files written by 'tuner probe --json' (loopback, --serve or --connect)."),
    output: str = typer.Option(..., "--output", "-o", metavar="FILE",
                               help="The picture to write: FILE.svg or FILE.png (the name picks the format)."),
    label: List[str] = typer.Option([], "--label", metavar="TEXT",
                                    help="The legend's name for each RUN, once per RUN in order "
                                         "(default: the file names)."),
    title: Optional[str] = typer.Option(None, "--title", metavar="TEXT", help="The picture's title (default: N, mode and host of the runs)."),
) -> None:
    """Draw probe runs over time from their --json timeline. Panels: TCP sockets open now
    and connections established so far, the rate, kernel slab and MemAvailable; several runs
    overlaid (before/after an apply, --source-net none vs spread), each run's phases (open,
    hold, close, ...) named where they begin; the default title says N, the mode and the
    host. Needs the optional extra
    tuner[plot] (pip install '.[plot]' in tuner's clone: matplotlib, jsonschema). Exits 0 when the
    picture was written; 1 when the extra is missing or FILE cannot be written; 2 when a
    RUN is not a tuner probe --json document with a timeline, or FILE does not end in
    .svg or .png (nothing is written)."""
    # Here: a command loads its own modules when it runs (everyone's start-up time).
    from .plot import plot as draw_runs

    drawn = draw_runs(runs, output, label, title)
    _emit(f"wrote {drawn['output']}: {', '.join(drawn['runs'])}")


def _given(ctx, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _refuse_other_ends_options(o: ProbeOptions, mode: Optional[str]) -> None:
    """Options another mode reads, given to this one (None: the local probe): one line, exit 2."""
    not_with = _not_with(mode)
    ignored = [flag for name, flag in not_with.items() if name in o.given]
    if not ignored:
        return
    if mode is None:
        name = next(n for n, flag in not_with.items() if flag == ignored[0])
        raise errors.UsageError(f"{ignored[0]} is for {_ends_of(name)} only (one end of a split probe)")
    raise errors.UsageError(f"{', '.join(ignored)} {'does' if len(ignored) == 1 else 'do'} not apply "
                            f"to {mode} (see 'tuner probe --help')")


def _bare_watch(argv: list) -> list:
    """`tuner diagnose --watch` takes an optional SECONDS; click options cannot, so a bare
    --watch (followed by another option or nothing) is given its 'until Ctrl-C' value 0.
    Anything else that follows is its value, for --watch's own parser to judge ('--watch
    many' is a bad --watch, not a bare one and a stray argument)."""
    if "diagnose" not in argv:
        return argv
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--watch":
            nxt = out[i + 1] if i + 1 < len(out) else None
            # Another option: a long one, or a one-letter short one such as -n.
            if nxt is None or nxt.startswith("--") or re.fullmatch(r"-[A-Za-z]", nxt):
                out.insert(i + 1, "0")
            break
    return out


def _safe(e: Exception) -> str:
    """An error's message for the terminal: it may name what a service chose (a path,
    its comm, its answer)."""
    from tuner.host.trust import safe_text  # the trust layer's imports only when an error prints

    return safe_text(str(e), 1000)


def main(argv: Optional[list] = None) -> int:
    """Entry point: one-line errors with documented exit codes, never a traceback."""
    argv = _bare_watch(sys.argv[1:] if argv is None else argv)
    try:
        # standalone_mode=False: typer returns Exit codes instead of exiting, and lets
        # usage errors reach us so they print as one line.
        rv = app(args=argv, prog_name="tuner", standalone_mode=False)
        return rv if isinstance(rv, int) else errors.EXIT_OK
    except TunerError as e:
        print(f"tuner: error: {_safe(e)}", file=sys.stderr)
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
        # A "no" at the prompt (or Ctrl-D there) is the user's choice, not a failure.
        print("tuner: nothing was changed (you answered no)", file=sys.stderr)
        return errors.EXIT_DECLINED
    except KeyboardInterrupt:
        print("tuner: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return errors.EXIT_OK
    except Exception as e:  # a bug: still one line, the traceback on request
        if os.environ.get("TUNER_DEBUG"):
            raise
        print(f"tuner: internal error: {type(e).__name__}: {_safe(e)} (TUNER_DEBUG=1 shows the "
              f"traceback)", file=sys.stderr)
        return errors.EXIT_FAILED


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
