"""A line server whose answer time grows past a known number of connections, so a
latency bound has a known place to stop: python slow_after.py PORT COUNT DELAY.

Every 'ping\\n' is answered 'pong\\n': at once while fewer than COUNT connections are
open, after DELAY seconds once COUNT or more are (asyncio.sleep: other connections are
served meanwhile, as a server whose event loop falls behind answers late, not never).
Written for tuner's tests (tests/test_probe_ramp.py); the stdlib only."""
import asyncio
import sys

PORT, COUNT, DELAY = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
open_now = 0


async def handle(reader, writer):
    global open_now
    open_now += 1
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            if open_now >= COUNT:
                await asyncio.sleep(DELAY)
            writer.write(b"pong\n")
    except ConnectionError:
        pass
    finally:
        open_now -= 1
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", PORT, backlog=4096)
    print("listening", PORT, flush=True)
    await server.serve_forever()


asyncio.run(main())
