"""The protocol state machines of `--connect URL` (probes/protocols), fed bytes as a
real server would send them, split at every byte boundary: the hand-written HTTP/1.1
and WebSocket framing against h11 and wsproto as the oracles (they build what a
conforming server sends and parse what the probe sends), Redis and tuner's own
exchange against their specifications' bytes.  No network: these are byte machines."""
import base64

import h11
import pytest
import wsproto
from wsproto.connection import ConnectionType
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping, RejectConnection,
                            Request, TextMessage)

from probes import protocols, wire
from probes.protocols import NEED, REFUSED, VERIFIED, TargetError, make, parse_target


def feed_split(exchange, data: bytes, step: int):
    """Feed data in pieces of `step` bytes; the verdict and every byte the exchange
    wanted to write (replies) along the way."""
    out, verdict = b"", NEED
    for i in range(0, len(data), step):
        verdict = exchange.feed(data[i:i + step])
        out += exchange.out
        if verdict != NEED:
            break
    return verdict, out


def h11_response(status, body=b"", chunked=False, headers=(), method=b"GET"):
    """What a conforming HTTP/1.1 server sends for this answer (h11 builds it)."""
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".replace(b"GET", method))
    server.next_event()
    fields = list(headers) + ([("Transfer-Encoding", "chunked")] if chunked else
                              [("Content-Length", str(len(body)))] if status not in (204, 304) else [])
    data = server.send(h11.Response(status_code=status, headers=fields))
    if body and method != b"HEAD":
        if chunked:
            for i in range(0, len(body), 7):
                data += server.send(h11.Data(data=body[i:i + 7]))
        else:
            data += server.send(h11.Data(data=body))
    if method != b"HEAD":
        data += server.send(h11.EndOfMessage())
    return data


def http(url="http://127.0.0.1:8080/x", **kw):
    return make(parse_target(url), **kw)


@pytest.mark.parametrize("step", [1, 3, 1000])
@pytest.mark.parametrize("status,chunked,verdict", [
    (200, False, VERIFIED), (200, True, VERIFIED), (301, False, VERIFIED), (204, False, VERIFIED),
    (503, False, REFUSED), (429, True, REFUSED), (404, False, REFUSED)])
def test_http_answer_read_to_the_end_of_its_body(status, chunked, verdict, step):
    body = b"" if status == 204 else b"hello world, " * 50
    data = h11_response(status, body, chunked)
    ex = http().opening()
    got, _ = feed_split(ex, data, step)
    assert got == verdict
    if verdict == REFUSED:
        assert ex.words.startswith(str(status))
    # Not a byte early: the last byte of the body decides.
    assert feed_split(http().opening(), data[:-1], step)[0] == NEED


def test_http_status_and_reason_are_the_servers_words():
    ex = http().opening()
    assert ex.feed(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n") == REFUSED
    assert ex.words == "503 Service Unavailable"
    ex = http().opening()
    assert ex.feed(b"HTTP/1.1 100 Continue\r\n\r\n") == NEED    # interim: the answer follows
    assert ex.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") == VERIFIED


def test_http_connection_close_and_bodies_ending_at_close_are_not_held():
    ex = http().opening()
    assert ex.feed(h11_response(200, b"x", headers=[("Connection", "close")])) == REFUSED
    assert "Connection: close" in ex.words
    ex = http().opening()
    assert ex.feed(b"HTTP/1.0 200 OK\r\n\r\nbody until close") == REFUSED


def test_http_head_answer_has_no_body():
    proto = http(method="HEAD")
    ex = proto.opening()
    assert ex.out.startswith(b"HEAD /x HTTP/1.1\r\n")
    assert ex.feed(h11_response(200, b"abc", method=b"HEAD")[:-0 or None]) == VERIFIED


def test_http_request_is_what_h11_reads():
    proto = http("http://127.0.0.1:8080/a/b?c=1", method="POST",
                 headers=("X-Probe: 1", "Host: example.test", "Content-Length: 0"))
    server = h11.Connection(h11.SERVER)
    server.receive_data(proto.opening().out)
    req = server.next_event()
    assert isinstance(req, h11.Request)
    assert (req.method, req.target, req.http_version) == (b"POST", b"/a/b?c=1", b"1.1")
    fields = dict(req.headers)
    assert fields[b"host"] == b"example.test" and fields[b"x-probe"] == b"1"
    # Keep-alive: the same connection takes the second check's request.
    assert isinstance(server.next_event(), h11.EndOfMessage)
    server.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
    server.send(h11.EndOfMessage())
    server.start_next_cycle()
    server.receive_data(proto.checking().out)
    assert isinstance(server.next_event(), h11.Request)
    # The default Host is the URL's host:port.
    server = h11.Connection(h11.SERVER)
    server.receive_data(http("http://[::1]:8080/").opening().out)
    assert dict(server.next_event().headers)[b"host"] == b"[::1]:8080"


@pytest.mark.parametrize("bad", ["NoColon", "Bad Name: x", "X: a\r\nY: b"])
def test_http_bad_header_is_refused_before_anything_runs(bad):
    with pytest.raises(TargetError):
        http(headers=(bad,))


def ws_server_and_handshake(subprotocol=None, offer=None):
    proto = make(parse_target("ws://127.0.0.1:9000/chat"), subprotocol=subprotocol)
    ex = proto.opening()
    server = wsproto.WSConnection(ConnectionType.SERVER)
    server.receive_data(ex.out)
    [req] = list(server.events())
    assert isinstance(req, Request) and req.target == "/chat" and req.host == "127.0.0.1:9000"
    if subprotocol:
        assert req.subprotocols == [subprotocol]
    return proto, ex, server


@pytest.mark.parametrize("step", [1, 5, 4096])
def test_ws_handshake_verified_by_wsproto_servers_accept(step):
    _, ex, server = ws_server_and_handshake()
    assert feed_split(ex, server.send(AcceptConnection()), step)[0] == VERIFIED


def test_ws_subprotocol_must_be_the_one_asked_for():
    _, ex, server = ws_server_and_handshake("chat.v1")
    assert ex.feed(server.send(AcceptConnection(subprotocol="chat.v1"))) == VERIFIED
    _, ex, server = ws_server_and_handshake("chat.v1")
    assert ex.feed(server.send(AcceptConnection())) == REFUSED
    assert "subprotocol" in ex.words


def test_ws_wrong_accept_and_rejections_are_refusals_in_the_servers_words():
    _, ex, server = ws_server_and_handshake()
    good = server.send(AcceptConnection())
    key = good.split(b"Sec-WebSocket-Accept: ")[1].split(b"\r\n")[0]
    assert ex.feed(good.replace(key, base64.b64encode(b"x" * 20))) == REFUSED
    assert ex.words == "101 with a wrong Sec-WebSocket-Accept"
    _, ex, server = ws_server_and_handshake()
    assert ex.feed(server.send(RejectConnection(status_code=503))) == REFUSED
    assert ex.words.startswith("503")


@pytest.mark.parametrize("step", [1, 7, 4096])
def test_ws_close_frame_right_after_the_handshake_counts_its_code_and_reason(step):
    proto, ex, server = ws_server_and_handshake()
    head = server.send(AcceptConnection())
    data = head + server.send(CloseConnection(code=1013, reason="Try Again Later"))
    verdict, _ = feed_split(ex, data, step)
    if verdict == VERIFIED:
        # The handshake came in a read of its own: the close waits in the socket for the
        # second check, which reads it.
        seen = -(-len(head) // step) * step
        ex = proto.checking()
        verdict, _ = feed_split(ex, data[seen:], step)
    assert verdict == REFUSED
    assert ex.words == "close 1013 Try Again Later"


@pytest.mark.parametrize("step", [1, 3, 70000])
def test_ws_ping_answered_by_wsproto_after_data_frames(step):
    proto, ex, server = ws_server_and_handshake()
    assert ex.feed(server.send(AcceptConnection())) == VERIFIED
    check = proto.checking()
    server.receive_data(check.out)
    [ping] = list(server.events())
    assert isinstance(ping, Ping) and ping.payload == protocols.ws.PING_PAYLOAD
    # The server talks first (a big binary message, a text one, its own ping), then pongs.
    data = (server.send(BytesMessage(data=b"\x01" * 70000)) + server.send(TextMessage(data="hi"))
            + server.send(Ping(payload=b"srv")) + server.send(ping.response()))
    verdict, replies = feed_split(check, data, step)
    assert verdict == VERIFIED
    # Our pong to the server's ping is a frame wsproto reads as such.
    server.receive_data(replies)
    [pong] = list(server.events())
    assert type(pong).__name__ == "Pong" and pong.payload == b"srv"


def test_ws_close_at_the_check_is_a_refusal():
    proto, ex, server = ws_server_and_handshake()
    ex.feed(server.send(AcceptConnection()))
    check = proto.checking()
    assert check.feed(server.send(CloseConnection(code=1001, reason="going away"))) == REFUSED
    assert check.words == "close 1001 going away"


def test_redis_ping_pong_and_error_replies():
    proto = make(parse_target("redis://127.0.0.1"))
    ex = proto.opening()
    assert ex.out == b"*1\r\n$4\r\nPING\r\n"
    assert feed_split(ex, b"+PONG\r\n", 1)[0] == VERIFIED
    ex = proto.checking()
    assert ex.feed(b"-ERR max number of clients reached\r\n") == REFUSED
    assert ex.words == "ERR max number of clients reached"
    ex = proto.opening()
    assert ex.feed(b"-NOAUTH Authentication required.\r\n") == REFUSED and ex.words.startswith("NOAUTH")


def test_tuner_wire_echoes_the_index_and_waits_for_ack():
    ex = make(parse_target("127.0.0.1:7000")).opening()
    assert ex.out == b""
    assert ex.feed(wire.INDEX.pack(7)[:3]) == NEED and ex.out == b""
    assert ex.feed(wire.INDEX.pack(7)[3:]) == NEED and ex.out == wire.INDEX.pack(7)
    assert ex.feed(wire.ACK) == VERIFIED
    ex = make(parse_target("tuner://127.0.0.1:7000")).opening()
    assert ex.feed(wire.INDEX.pack(1) + wire.NAK) == REFUSED and "NAK" in ex.words


def test_tcp_send_and_expect_with_escapes():
    proto = make(parse_target("tcp://127.0.0.1:9"), send=r"PING\r\n", expect=r"+PO")
    ex = proto.opening()
    assert ex.out == b"PING\r\n"
    assert ex.feed(b"+P") == NEED and ex.feed(b"ONG\r\n") == VERIFIED
    ex = proto.checking()
    assert ex.feed(b"-ERR") == REFUSED and "-ERR" in ex.words
    silent = make(parse_target("tcp://127.0.0.1:9"))
    assert not silent.opening().needs_answer and silent.checking() is None
    assert make(parse_target("tcp://127.0.0.1:9"), send=r"x\x00").opening().out == b"x\x00"


@pytest.mark.parametrize("url,scheme,host,port,path", [
    ("10.0.0.1:9000", "tuner", "10.0.0.1", 9000, "/"),
    ("tuner://[::1]:7000", "tuner", "::1", 7000, "/"),
    ("http://127.0.0.1/", "http", "127.0.0.1", 80, "/"),
    ("http://[fd00::1]:80/a?b", "http", "fd00::1", 80, "/a?b"),
    ("ws://localhost:8080/chat", "ws", "127.0.0.1", 8080, "/chat"),
    ("redis://127.0.0.1", "redis", "127.0.0.1", 6379, "/"),
    ("TCP://127.0.0.1:5", "tcp", "127.0.0.1", 5, "/"),
])
def test_urls(url, scheme, host, port, path):
    t = parse_target(url)
    assert (t.scheme, t.host, t.port, t.path) == (scheme, host, port, path)


@pytest.mark.parametrize("url", [":7000", "127.0.0.1", "ftp://x:1", "::1:80", "[::1]80", "http://h:0/",
                                 "tcp://127.0.0.1:5/path", "http://no.such.host.invalid/"])
def test_bad_urls(url):
    with pytest.raises(TargetError):
        parse_target(url)


@pytest.mark.parametrize("url,option", [("redis://127.0.0.1", {"send": "x"}),
                                        ("127.0.0.1:1", {"method": "POST"}),
                                        ("http://127.0.0.1/", {"subprotocol": "x"}),
                                        ("tcp://127.0.0.1:1", {"headers": ("A: b",)})])
def test_options_a_scheme_does_not_take(url, option):
    with pytest.raises(TargetError, match="does not apply|do\\(es\\) not apply"):
        make(parse_target(url), **option)
