"""A stock asyncio server (asyncio.start_server, default backlog 100) speaking the probe's
wire protocol: python asyncio_wire.py PORT [STALL_SECONDS].  Its first handler makes a
blocking call for STALL_SECONDS, as a handler that calls a blocking library does, so
the event loop stops accepting while a burst arrives."""
import asyncio, struct, sys, time
PORT = int(sys.argv[1])
count = 0
async def handle(reader, writer):
    global count
    idx = count; count += 1
    if idx == 0:
        time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)   # a blocking call in a handler: the loop stops accepting
    writer.write(struct.pack("!I", idx))
    try:
        echo = await reader.readexactly(4)
        writer.write(b"\x06" if echo == struct.pack("!I", idx) else b"\x15")
        await reader.read()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", PORT)
    print("listening", PORT, flush=True)
    await server.serve_forever()
asyncio.run(main())
