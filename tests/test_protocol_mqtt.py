"""mqtt:// (probes/protocols/mqtt.py) against paho-mqtt, the Eclipse project's client, as
the oracle: the CONNECT the probe sends is byte for byte the one paho's client sends for
the same client id, credentials and keep alive; paho's client reads each CONNACK the
probe is fed and must agree on whether the broker accepted; every answer is fed split at
every byte.  paho speaks to the test over one loopback socket (it only writes to and
reads from a socket).  Then for real: `tuner probe --connect mqtt://` against Mosquitto
with a max_connections cap, under it, and refusing anonymous clients."""
import json
import socket
import struct

import paho.mqtt.client as paho
import pytest

from conftest import run_tuner
from realservers import real_server  # noqa: F401 (a fixture)
from probes.protocols import NEED, REFUSED, VERIFIED, TargetError, make, mqtt, parse_target


def probe(url="mqtt://127.0.0.1", **options):
    return make(parse_target(url), **options)


def pahos_connect(client_id, keepalive, username=None, password=None):
    """The bytes paho's 3.1.1 client sends to connect with a clean session, and the
    client (still connected to the test's socket) with that socket."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=paho.MQTTv311, clean_session=True, reconnect_on_failure=False)
    if username is not None:
        client.username_pw_set(username, password)
    client.connect("127.0.0.1", listener.getsockname()[1], keepalive=keepalive)
    server, _ = listener.accept()
    listener.close()
    server.settimeout(5)
    data = b""
    while len(data) < 2 or mqtt.header(data) is None or len(data) < sum(mqtt.header(data)[1:]):
        data += server.recv(4096)
    return data, client, server


def pahos_verdict(client, server, connack: bytes) -> bool:
    """Whether paho's client takes this CONNACK as the broker accepting (a refused
    protocol version paho answers with an error instead of its callback)."""
    said = []
    client.on_connect = lambda c, userdata, flags, reason, properties: said.append(reason)
    server.sendall(connack)
    rc = client.loop_read()
    if client.socket():
        client.socket().close()
    server.close()
    return rc == paho.MQTT_ERR_SUCCESS and bool(said) and not said[0].is_failure


def feed_split(exchange_of, data: bytes):
    """Every way of feeding `data` in two pieces, and byte by byte: the verdicts (one
    fresh exchange each) and the words."""
    seen = set()
    for cut in range(len(data) + 1):
        ex, verdict = exchange_of(), NEED
        for piece in (data[:cut], data[cut:]):
            if piece and verdict == NEED:
                verdict = ex.feed(piece)
        seen.add((verdict, ex.words))
    ex, verdict = exchange_of(), NEED
    for i in range(len(data)):
        verdict = ex.feed(data[i:i + 1])
        if verdict != NEED:
            break
    seen.add((verdict, ex.words))
    return seen


@pytest.mark.parametrize("username,password,keepalive", [
    (None, None, 0), ("u", None, 30), ("probe", "s3cret-ü", 65535), ("", "", 1)])
def test_connect_is_pahos_byte_for_byte(username, password, keepalive):
    proto = probe(username=username, password=password, keepalive=keepalive, client_id_prefix="lt-")
    ours = proto.opening().out
    client_id = ours[12 + 2:12 + 2 + struct.unpack("!H", ours[12:14])[0]].decode()
    theirs, client, server = pahos_connect(client_id, keepalive, username, password)
    server.close()
    assert ours == theirs


def test_every_connection_has_its_own_client_id():
    proto = probe(client_id_prefix="bench-")
    ids = {proto.client_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(i.startswith("bench-") and len(i) <= 23 for i in ids)
    other = probe(client_id_prefix="bench-")   # another worker, or another load host
    assert not ids & {other.client_id() for _ in range(1000)}


@pytest.mark.parametrize("code", [0, 1, 2, 3, 4, 5, 6])
def test_connack_read_like_paho_at_every_split(code):
    connack = bytes([mqtt.CONNACK << 4, 2, 0, code])
    proto = probe()
    seen = feed_split(proto.opening, connack)
    assert len(seen) == 1
    ((verdict, words),) = seen
    _, client, server = pahos_connect("x", 0)
    assert (verdict == VERIFIED) == pahos_verdict(client, server, connack)
    if code:
        assert words == f"CONNACK {code} " + mqtt.RETURN_CODES.get(code, "a return code 3.1.1 does not define")


def test_the_specifications_words_for_each_refusal():
    assert [mqtt.RETURN_CODES[c] for c in range(1, 6)] == [
        "unacceptable protocol version", "identifier rejected", "server unavailable",
        "bad user name or password", "not authorized"]


def test_pingreq_and_pingresp():
    proto = probe()
    check = proto.checking()
    assert check.out == bytes([paho.PINGREQ, 0])
    assert feed_split(proto.checking, bytes([paho.PINGRESP, 0])) == {(VERIFIED, "")}


def test_the_first_packet_must_be_connack():
    seen = feed_split(probe().opening, bytes([paho.PINGRESP, 0]))
    assert seen == {(REFUSED, "answered PINGRESP, not CONNACK")}


def test_a_bad_connack_and_a_bad_length_are_refused():
    assert feed_split(probe().opening, bytes([paho.CONNACK, 3, 0, 0, 0])) == {
        (REFUSED, "a CONNACK of 3 bytes, not 2")}
    assert feed_split(probe().opening, bytes([paho.CONNACK, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F])) == {
        (REFUSED, "a packet with a malformed Remaining Length")}


def test_packets_before_pingresp_are_skipped():
    # A broker may deliver other packets (a retained PUBLISH, say) before answering.
    publish = bytes([0x30]) + mqtt.remaining_length(200) + b"\0\x01t" + b"x" * 197
    assert feed_split(probe().checking, publish + bytes([paho.PINGRESP, 0])) == {(VERIFIED, "")}


def test_remaining_length_is_the_specifications():
    # 2.2.3's table: the boundaries of one to four bytes.
    for n, encoded in [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"),
                       (16384, b"\x80\x80\x01"), (2097151, b"\xff\xff\x7f"), (2097152, b"\x80\x80\x80\x01"),
                       (268435455, b"\xff\xff\xff\x7f")]:
        assert mqtt.remaining_length(n) == encoded
        assert mqtt.header(bytes([0x30]) + encoded) == (3, 1 + len(encoded), n)


@pytest.mark.parametrize("options,words", [
    ({"keepalive": 70000}, "--keepalive"), ({"keepalive": -1}, "--keepalive"),
    ({"password": "x"}, r"--password \(or --password-file\) needs --username"), ({"client_id_prefix": "a\nb"}, "--client-id-prefix"),
])
def test_bad_options(options, words):
    with pytest.raises(TargetError, match=words):
        probe(**options)


def test_options_of_mqtt_only():
    with pytest.raises(TargetError, match="--username do.es. not apply to redis://"):
        make(parse_target("redis://127.0.0.1"), username="u")
    assert parse_target("mqtt://[::1]").port == 1883
    with pytest.raises(TargetError, match="takes no path"):
        parse_target("mqtt://127.0.0.1/topic")


# -- for real: Mosquitto from Debian's package (tests/realservers.py) ------------------------

def probe_run(url, n, *args, hold=1):
    """`tuner probe --connect URL -n N --json`: (exit code, document, stderr)."""
    proc = run_tuner("probe", "--connect", url, "-n", n, "--timeout", 10, "--hold", hold, "--json", "-q",
                     *args, timeout=120)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def test_mosquitto_holds_exactly_its_max_connections(real_server):
    # One run per broker: Debian's Mosquitto 2.0.11 counts a client's close twice
    # against its listener (fixed in 2.0.12: "max_connections option not being correctly
    # counted"), so after a run's connections close its cap admits that many more.
    cap = 200
    srv = real_server("mosquitto", max_connections=cap, hosts=("127.0.0.1",))
    rc, doc, err = probe_run(f"mqtt://127.0.0.1:{srv.port}", cap + 40, "--client-id-prefix", "cap-")
    assert rc == 3, (err, doc["verified"], doc["server"])
    assert doc["protocol"] == "mqtt" and doc["checked_twice"]
    assert doc["verified"] == doc["answered"] == cap, doc["server"]
    # Beyond max_connections Mosquitto closes at accept, without a CONNACK: a reset when
    # the CONNECT had arrived, a close when not.
    server = doc["server"]
    assert server["closed"] + server["reset"] == 40 and server["refused"] == server["check_refused"] == 0
    stalled = doc["stalled"]
    assert stalled["side"] == "server" and stalled["at"] == cap
    assert stalled["sentence"].startswith(f"the server (mosquitto pid {srv.pid}) stopped at {cap} ("), stalled
    assert "before answering" in stalled["sentence"], stalled["sentence"]


def test_mosquitto_under_its_cap_verifies_every_connection_twice(real_server):
    srv = real_server("mosquitto", max_connections=300, hosts=("127.0.0.1",))
    rc, doc, err = probe_run(f"mqtt://127.0.0.1:{srv.port}", 300, "--keepalive", "30")
    assert rc == 0, err
    assert doc["verified"] == 300 and doc["checked_twice"] and doc["failed"] == 0


def test_mosquitto_refuses_in_the_specifications_words(real_server):
    srv = real_server("mosquitto", hosts=("127.0.0.1",), lines=["allow_anonymous false"])
    rc, doc, err = probe_run(f"mqtt://127.0.0.1:{srv.port}", 20, "--username", "nobody", "--password", "x")
    assert rc == 3 and doc["verified"] == 0, err
    assert doc["server"]["refused"] == 20
    assert [(w["words"], w["count"]) for w in doc["server"]["words"]] == [("CONNACK 5 not authorized", 20)]
    assert "CONNACK 5 not authorized" in doc["stalled"]["sentence"]
