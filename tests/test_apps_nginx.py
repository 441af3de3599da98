"""nginx's adapter (tuner/apps/nginx.py): its reading of nginx's syntax, and `tuner
diagnose` of real nginx servers (tests/realservers.py) against what a client holds."""
from __future__ import annotations

import os

import pytest

from tuner.apps import base, nginx

CONF = """\
# a comment; with { braces }
user www-data;
worker_processes 2;
events {
    worker_connections  700;   # trailing comment
}
http {
    log_format main '$remote_addr "quoted; {not a block}"';
    include conf.d/*.conf;
    server { listen 8080; location / { proxy_pass http://127.0.0.1:9; } }
}
"""


def test_syntax_blocks_quotes_comments_and_lines():
    tree = nginx.parse(CONF, "/x/nginx.conf")
    assert [d.name for d in tree] == ["user", "worker_processes", "events", "http"]
    events = tree[2]
    assert events.block[0].name == "worker_connections" and events.block[0].args == ["700"]
    assert events.block[0].where == "/x/nginx.conf:5"
    http = tree[3]
    assert http.block[0].args == ["main", '$remote_addr "quoted; {not a block}"']
    assert http.block[2].block[1].block[0].name == "proxy_pass"


def test_includes_are_followed_relative_to_the_conf_directory(tmp_path):
    os.chmod(tmp_path, 0o755)
    (tmp_path / "conf.d").mkdir(mode=0o755)
    (tmp_path / "nginx.conf").write_text(CONF.replace("worker_connections  700;", "include ev.conf;"))
    (tmp_path / "ev.conf").write_text("worker_connections 333;\n")
    (tmp_path / "conf.d" / "a.conf").write_text("server { listen 1; }\n")
    proc = base.ProcView(os.getpid(), 1, "nginx", None,
                         (f"nginx: master process /usr/sbin/nginx -g daemon off; pcre_jit on; -c {tmp_path}/nginx.conf",),
                         0, 0, 1024, 1024, None)
    conf = nginx.Config(proc)
    assert conf.unread == []
    wc = conf.find("events", "worker_connections")
    assert (wc.args, wc.where) == (["333"], f"{tmp_path}/ev.conf:1")
    assert conf.anywhere(nginx.PROXY_DIRECTIVES)
    assert nginx.master_args(proc) == {"-c": f"{tmp_path}/nginx.conf", "-g": "daemon off; pcre_jit on;"}
