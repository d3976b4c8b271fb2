"""The engine's port over IPv6: relays every connection to [::]:PORT (IPv6 only) to 127.0.0.1:PORT.

    python3 v6_front.py PORT

The lab engine listens on IPv4 only; a host's services usually listen on both versions, and an attacker
who finds IPv4 closed tries IPv6. Runs until killed (prepare starts it detached).
"""

from __future__ import annotations

import asyncio
import socket
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def relay(port: int, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
    try:
        engine_reader, engine_writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, engine_writer), pipe(engine_reader, client_writer))


async def main(port: int) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::", port))
    server = await asyncio.start_server(lambda r, w: relay(port, r, w), sock=sock)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
