"""The lab exchange's market-data WebSocket feed: Kraken's WebSocket API v2 ``ticker`` channel, served with aiohttp.

A client connects to ``ws://<host>:<port>/v2``, receives ``{"channel": "status", ...}``, subscribes with
``{"method": "subscribe", "params": {"channel": "ticker", "symbol": ["BTC/USD", ...]}}`` and then gets a ticker
``update`` for each symbol every ``INTERVAL`` seconds, from the exchange's own prices.

Fault ``ws-down``: the feed wedges - connections stay open (the TCP side answers), nothing is published and no
new subscription is answered, as a stuck feed service does; market data goes stale. ``restart()`` (seed 003:
restart the WebSocket service) closes every connection and serves again on the same port; the fault goes with the
old service. aiohttp is imported when the feed starts, so an exchange without it runs without a feed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("tradeops.lab.wsfeed")

INTERVAL = 0.5
PATH = "/v2"


class WsFeed:
    def __init__(self, prices: Callable[[], dict[str, float]], host: str) -> None:
        self.prices = prices  # {"BTC/USD": price, ...}
        self.host = host
        self.port = 0
        self.wedged = False
        self.restarts = 0
        self._runner: Any = None
        self._sockets: set[Any] = set()

    async def start(self) -> int:
        from aiohttp import web

        app = web.Application()
        app.router.add_get(PATH, self._serve)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=256)
        await site.start()
        self.port = int(site._server.sockets[0].getsockname()[1])  # noqa: SLF001 - aiohttp exposes no other way
        log.info("market-data feed on ws://%s:%d%s", self.host, self.port, PATH)
        return self.port

    async def stop(self) -> None:
        for ws in list(self._sockets):
            try:
                await asyncio.wait_for(ws.close(code=1001, message=b"feed restarting"), 1.0)
            except (TimeoutError, OSError, RuntimeError):
                pass
        self._sockets.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart(self) -> dict[str, Any]:
        await self.stop()
        self.wedged = False
        self.restarts += 1
        await self.start()
        log.warning("market-data feed restarted (#%d)", self.restarts)
        return self.view()

    def view(self) -> dict[str, Any]:
        return {"port": self.port, "wedged": self.wedged, "clients": len(self._sockets), "restarts": self.restarts}

    async def _serve(self, request: Any) -> Any:
        from aiohttp import WSMsgType, web

        ws = web.WebSocketResponse(heartbeat=None, autoping=True)
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            if self.wedged:  # a stuck service: the connection is open, nothing is read or sent
                while self.wedged and not ws.closed:
                    await asyncio.sleep(0.2)
            await ws.send_str(json.dumps({"channel": "status", "type": "update",
                                          "data": [{"system": "online", "api_version": "v2"}]}))
            symbols: list[str] = []
            pusher = asyncio.create_task(self._push(ws, symbols))
            try:
                async for msg in ws:
                    if msg.type != WSMsgType.TEXT:
                        continue
                    try:
                        req = json.loads(msg.data)
                    except ValueError:
                        continue
                    params = req.get("params") or {}
                    if req.get("method") == "subscribe" and params.get("channel") == "ticker":
                        wanted = [s for s in params.get("symbol") or [] if s in self.prices()]
                        symbols[:] = sorted(set(symbols) | set(wanted))
                        await ws.send_str(json.dumps({"method": "subscribe", "success": True,
                                                      "result": {"channel": "ticker", "symbol": wanted},
                                                      "time_in": time.time()}))
            finally:
                pusher.cancel()
        finally:
            self._sockets.discard(ws)
        return ws

    async def _push(self, ws: Any, symbols: list[str]) -> None:
        while not ws.closed:
            await asyncio.sleep(INTERVAL)
            if self.wedged or not symbols:
                continue
            prices = self.prices()
            data = [{"symbol": s, "last": prices[s], "timestamp": time.time()} for s in symbols if s in prices]
            try:
                await ws.send_str(json.dumps({"channel": "ticker", "type": "update", "data": data}))
            except (ConnectionError, RuntimeError):
                return
