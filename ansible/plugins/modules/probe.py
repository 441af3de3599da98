#!/usr/bin/python
# -*- coding: utf-8 -*-
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: probe
short_description: tuner's split connection probe, one side per host
description:
  - "C(mode=serve) runs the server side (C(tuner probe --serve)): accepts clients on
    O(listen), runs the wire exchange, and ends by itself once O(expect) have verified
    and then either their clients have closed or O(hold) seconds have passed (or at
    O(timeout) when they have not verified by then). Run it with C(async) and C(poll: 0), then
    collect it with C(async_status)."
  - "C(mode=listening) waits until something listens on O(listen), read from the
    kernel's socket table (nothing connects, so the server's counts stay exact)."
  - "C(mode=stop) ends the C(mode=serve) probe still serving O(listen) in this network
    namespace (or O(netns)): for the C(always) section of a play whose later step failed
    while the server served asynchronously (Ansible cannot stop an async job). The
    server's orchestrator gets SIGTERM, ends its workers and reports, so the serve job
    finishes with its partial result (collect it with C(async_status)); after O(timeout)
    (default 20) seconds it is killed. Only processes of this user that run
    C(python -m probes ... --serve LISTEN) with exactly this O(listen) are touched.
    C(changed) is true when one was stopped; in check mode they are only listed."
  - "C(mode=connect) runs the client side (C(tuner probe --connect)): O(connections)
    to O(server), over the local addresses inside O(source_net) (the aliases the apply
    module added), held O(hold) seconds and each checked a second time at its end.
    O(server) is a URL like C(tuner probe --connect) takes: tuner's own C(mode=serve) at
    HOST:PORT, or the service itself in its own protocol, plain or through TLS (every
    scheme and its options below; the certificate is verified against the system store
    unless O(ca) or O(insecure) says otherwise); the result's C(stalled) says which side
    stalled. O(step) ramps the connections up in steps, a row of what the service costs
    each (C(probe.steps), C(probe.service) when it runs on this host)."
  - "The options of C(mode=connect) and the URL's forms come from tuner's protocol
    registry, as C(tuner probe --connect) takes them (a generated documentation fragment
    and argument_spec: C(python -m tuner.manpages man) writes both)."
  - "The result is the probe's JSON (C(--json)) under C(probe), with C(verified) and
    C(ok) at the top. The task fails when the probe falls short (rc 3), with the limit
    that stopped it. A probe changes no setting: C(changed) is false (but for C(mode=stop)). In
    check mode nothing is opened."
version_added: "0.1.0"
author: tuner developers
extends_documentation_fragment:
  - tuner.tuner.common
  - tuner.tuner.probe_connect
options:
  mode:
    description: serve, listening, stop or connect.
    type: str
    required: true
    choices: [serve, listening, stop, connect]
  listen:
    description: serve, listening and stop, ADDR:PORT (":PORT" for every address).
    type: str
  connections:
    description: connect, connections to open, verify and hold (100000, 100k).
    type: str
  hold:
    description: Seconds to hold the verified connections (serve needs expect and ends once its clients closed; a server's must outlast its clients', whose second check is at the end of theirs).
    type: float
  timeout:
    description: Seconds to establish and verify (serve, the whole run; listening and stop, how long to wait; default 20).
    type: float
  echo_timeout:
    description: serve, seconds a client has to echo its index.
    type: float
    default: 10.0
  rate:
    description: connect, new connections per second.
    type: float
  workers:
    description: Worker processes (default as few as RLIMIT_NOFILE allows).
    type: int
  source_net:
    description: connect, spread over the local addresses inside this network, IPv4 or IPv6 (aliases, or an AnyIP prefix from the apply module's anyip_net).
    type: str
  netns:
    description: Run the probe inside this network namespace (stop, the namespace it serves in).
    type: str
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: serve the total the load hosts bring
  tuner.tuner.probe:
    mode: serve
    listen: "10.77.0.1:7000"
    expect: 300000
    hold: 2
    timeout: 120
  async: 300
  poll: 0
  register: served

- tuner.tuner.probe:
    mode: listening
    listen: "10.77.0.1:7000"

- name: in a play's always section, end a server a failed step left serving
  tuner.tuner.probe:
    mode: stop
    listen: "10.77.0.1:7000"

- name: each load host its share, over its aliases
  tuner.tuner.probe:
    mode: connect
    server: "10.77.0.1:7000"
    connections: 100000
    source_net: 10.77.1.0/24
    hold: 10

- name: the service itself over TLS, its certificate verified against our CA
  tuner.tuner.probe:
    mode: connect
    server: "https://gw.example.internal/health"
    connections: 50000
    ca: /etc/pki/internal-ca.pem
    tls_version: "1.3"
    source_net: 10.77.1.0/24
    hold: 30

- name: an MQTT broker, ramped in steps of 10,000 with a ping every 20 s
  tuner.tuner.probe:
    mode: connect
    server: "mqtt://broker.example.internal"
    connections: 100000
    client_id_prefix: "loadtest-{{ inventory_hostname }}-"
    username: loadtest
    password_file: /etc/tuner/mqtt.pw   # mode 600 on the load host: the password in no command line
    keepalive: 60
    step: 10000
    ping_every: 20
    hold: 60
"""

RETURN = r"""
probe:
  description: The probe's result (as C(tuner probe --serve/--connect --json) prints it, without the schema key).
  type: dict
  returned: serve, connect
verified:
  description: Connections verified.
  type: int
  returned: serve, connect
ok:
  description: Whether every expected (serve) or requested (connect) connection verified.
  type: bool
  returned: serve, connect
listeners:
  description: Listening sockets found on listen's port.
  type: int
  returned: listening
stopped:
  description: PIDs of the serve probes that ended on SIGTERM (check mode, that would be stopped).
  type: list
  elements: int
  returned: stop
killed:
  description: PIDs of those still running after timeout, killed with SIGKILL.
  type: list
  elements: int
  returned: stop
rc:
  description: The probe's exit code (0 all verified, 3 short, 2 bad input, 128+N signal N).
  type: int
  returned: always
"""

import os
import signal
import sys
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.tuner.tuner.plugins.module_utils.probe_connect import CONNECT_OPTIONS, PROTOCOL, RAMP
from ansible_collections.tuner.tuner.plugins.module_utils.tuner_common import (
    fail, require_tuner, short_of, tuner_errors)


def _launch(module, cfg):
    """The library's probe launcher (its typed result), its errors as tuner's exit codes."""
    from probes import ProbeConfigError
    from probes.launch import ProbeError, ProbeInterrupted, run

    try:
        return run(cfg, netns=module.params["netns"])
    except ProbeConfigError as exc:   # nothing was opened
        fail(module, tuner_errors.UsageError(str(exc)))
    except ProbeInterrupted as exc:
        fail(module, tuner_errors.TunerError(str(exc), 128 + exc.signum))
    except ProbeError as exc:
        fail(module, tuner_errors.TunerError(str(exc)))


def _why(result):
    """The first error's limit and hint, as the probe classified it."""
    errors = result.get("errors") or []
    if not errors:
        return ""
    first = errors[0]
    parts = [first.get("limit") or first.get("errno"), first.get("hint")]
    return ": " + "; ".join(str(p) for p in parts if p)


def serve(module):
    from probes import serve as serve_mod
    from tuner.inputs import parse_target

    p = module.params
    try:
        expect = parse_target(p["expect"], "expect") if p["expect"] is not None else None
    except Exception as exc:
        fail(module, exc)
    cfg = serve_mod.ServeConfig(listen=p["listen"], expect=expect, hold=p["hold"], timeout=p["timeout"],
                                echo_timeout=p["echo_timeout"], workers=p["workers"])
    ran = _launch(module, cfg)
    rc, result = ran.exit_code, ran.to_dict()
    out = dict(changed=False, rc=rc, probe=result, verified=result["verified"], ok=result["ok"])
    if rc != 0:
        short_of(module, "served %s verified of %s expected on %s, ended by %s%s" % (
            "{:,}".format(result["verified"]), "{:,}".format(expect or 0), p["listen"],
            result["stopped_by"], _why(result)), rc, **out)
    module.exit_json(**out)


def _protocol_options(module):
    """The protocol options given, as the connect settings take them: the registry says
    which differ from their defaults (those the URL's scheme does not take are refused
    by it, in one line).  One this host's tuner does not know (the collection is newer)
    is refused too, rather than dropped."""
    from probes import protocols   # tuner's, importable once require_tuner passed

    p = module.params
    known = dict((o.name, o) for o in protocols.options())
    unknown = [name for name in PROTOCOL if name not in known and _given(p, name)]
    if unknown:
        fail(module, tuner_errors.UsageError(
            "%s: not an option of the tuner on this host (%s): update it to the collection's" % (
                ", ".join(unknown), sys.executable)))
    owned = dict((name, known[name]) for name in PROTOCOL if name in known)
    return dict((name, list(p[name]) if o.repeatable else p[name]) for name, o in owned.items() if o.given(p[name]))


def connect(module):
    from probes import connect as connect_mod
    from tuner.inputs import parse_target

    p = module.params
    try:
        n = parse_target(p["connections"], "connections")
    except Exception as exc:
        fail(module, exc)
    cfg = connect_mod.ConnectConfig(target=p["server"], connections=n, source_net=p["source_net"],
                                    rate=p["rate"], hold=p["hold"] or 0.0, timeout=p["timeout"],
                                    workers=p["workers"], options=_protocol_options(module),
                                    **dict((name, p[name]) for name in RAMP))
    ran = _launch(module, cfg)
    from tuner.probing.run import add_service_cost, explain_stall
    explain_stall(ran, p["netns"])   # the sentence names the side (and the server's process)
    rc, result = ran.exit_code, ran.to_dict()
    add_service_cost(result)   # a step run's cost per connection, as the CLI's --json has it
    out = dict(changed=False, rc=rc, probe=result, verified=result["verified"], ok=result["ok"])
    if rc != 0:
        short_of(module, "verified %s of %s to %s: %s%s" % (
            "{:,}".format(result["verified"]), "{:,}".format(n), p["server"], result["stalled"]["sentence"],
            _why(result)), rc, **out)
    module.exit_json(**out)


def listening(module):
    from probes import wire
    from tuner.host.netns import in_netns
    from tuner.readings import listeners

    p = module.params
    try:
        address, port = wire.parse_endpoint(p["listen"], listen=True)
    except wire.EndpointError as exc:
        fail(module, tuner_errors.UsageError("listen: %s" % exc))
    wildcard = address == "0.0.0.0"
    deadline = time.monotonic() + (p["timeout"] or 20.0)
    try:
        while True:
            with in_netns(p["netns"]):
                found = listeners(port, None if wildcard else address)
            if found or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    except Exception as exc:
        fail(module, exc)
    if not found:
        short_of(module, "nothing listens on %s after %ss: did the serve task start (async_status "
                         "shows why not)?" % (p["listen"], p["timeout"] or 20.0),
                 tuner_errors.EXIT_FAILED, changed=False, listeners=0)
    module.exit_json(changed=False, rc=0, listeners=found)


def _serving(listen, netns):
    """The orchestrators of `--serve LISTEN` probes of this user in this namespace: the
    lean interpreter launch.run starts (python -m probes --jsonl ... --serve
    LISTEN ...), not its workers (forks with the same command line, which end with it)."""
    import psutil
    from tuner.host import procpid
    from tuner.host import netns as namespaces

    if netns is not None:
        namespaces.check_name(netns, "netns")
        where = os.stat(os.path.join(namespaces.RUN_DIR, netns)).st_ino
    else:
        where = procpid.netns_inode(os.getpid())
    found = {}
    for proc in psutil.process_iter(["cmdline", "uids", "ppid"]):
        argv = proc.info["cmdline"] or []
        uids = proc.info["uids"]
        if proc.pid == os.getpid() or uids is None or uids.real != os.getuid():
            continue
        start = 2 if argv[1:2] in (["-P"], ["-I"]) else 1   # probes.launch.SAFE_PATH's flag
        if argv[start:start + 2] != ["-m", "probes"] or "--serve" not in argv[:-1]:
            continue
        if argv[argv.index("--serve") + 1] != listen:
            continue
        try:
            if procpid.netns_inode(proc.pid) != where:
                continue
        except OSError:   # gone meanwhile
            continue
        found[proc.pid] = proc
    return [proc for pid, proc in sorted(found.items()) if proc.info["ppid"] not in found]


def stop(module):
    import psutil
    from probes import wire

    p = module.params
    try:
        wire.parse_endpoint(p["listen"], listen=True)
    except wire.EndpointError as exc:
        fail(module, tuner_errors.UsageError("listen: %s" % exc))
    try:
        procs = _serving(p["listen"], p["netns"])
    except Exception as exc:
        fail(module, exc)
    pids = [proc.pid for proc in procs]
    if module.check_mode:
        module.exit_json(changed=bool(pids), rc=0, stopped=pids, killed=[])
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)   # it ends its workers, then reports
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=p["timeout"] or 20.0)
    killed = []
    for proc in alive:   # its workers follow it (PR_SET_PDEATHSIG)
        try:
            proc.kill()
            killed.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    module.exit_json(changed=bool(pids), rc=0, stopped=pids, killed=killed)


def _given(p, name):
    """Whether a connect option was given a value other than its default."""
    return p[name] is not None and p[name] != CONNECT_OPTIONS[name].get("default", [])


def _refuse_connect_options(module):
    """A mode other than connect takes none of mode=connect's options but expect (serve's
    N too): one given is refused in one line, as the CLI refuses another end's options,
    rather than silently ignored."""
    p = module.params
    given = [name for name in CONNECT_OPTIONS if name != "expect" and _given(p, name)]
    if given:
        fail(module, tuner_errors.UsageError("%s: mode=connect's option(s), not mode=%s's" % (
            ", ".join(given), p["mode"])))


def argument_spec():
    """The module's own options, then mode=connect's (the URL, every protocol's and the
    ramp's), generated from tuner's registry beside the documentation that names them."""
    spec = dict(
        mode=dict(type="str", required=True, choices=["serve", "listening", "stop", "connect"]),
        listen=dict(type="str"),
        connections=dict(type="str"),
        hold=dict(type="float"),
        timeout=dict(type="float"),
        echo_timeout=dict(type="float", default=10.0),
        rate=dict(type="float"),
        workers=dict(type="int"),
        source_net=dict(type="str"),
        netns=dict(type="str"),
    )
    spec.update((name, dict(option)) for name, option in CONNECT_OPTIONS.items())
    return spec


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        required_if=[("mode", "serve", ("listen",)), ("mode", "listening", ("listen",)),
                     ("mode", "stop", ("listen",)),
                     ("mode", "connect", ("server", "connections"))],
        supports_check_mode=True,
    )
    require_tuner(module)
    if module.params["mode"] != "connect":
        _refuse_connect_options(module)
    if module.check_mode and module.params["mode"] != "stop":
        # Nothing serves in check mode, so nothing listens either.
        module.exit_json(changed=False, skipped=True, msg="check mode: no connections opened")
    {"serve": serve, "connect": connect, "listening": listening, "stop": stop}[module.params["mode"]](module)


if __name__ == "__main__":
    main()
