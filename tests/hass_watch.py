"""Run by Home Assistant's own Python (tests/hass.py): print state changes as JSON lines.

Usage: hass_watch.py WS_URL TOKEN NEEDLE. Subscribes to ``state_changed`` over the websocket
API, prints ``{"subscribed": true}`` once subscribed, then one line per change of an entity
whose id contains NEEDLE: entity id, old and new state, new attributes.
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp


async def watch(url: str, token: str, needle: str) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(
            f"{url}/api/websocket") as ws:
        await ws.receive_json()  # auth_required
        await ws.send_json({"type": "auth", "access_token": token})
        reply = await ws.receive_json()
        if reply.get("type") != "auth_ok":
            raise SystemExit(f"websocket auth failed: {reply}")
        await ws.send_json({"id": 1, "type": "subscribe_events", "event_type": "state_changed"})
        async for message in ws:
            document = json.loads(message.data)
            if document.get("type") == "result":
                print(json.dumps({"subscribed": bool(document.get("success"))}), flush=True)
                continue
            data = document.get("event", {}).get("data", {})
            if needle not in data.get("entity_id", ""):
                continue
            old, new = data.get("old_state") or {}, data.get("new_state") or {}
            print(json.dumps({"entity_id": data["entity_id"], "old": old.get("state"),
                              "new": new.get("state"),
                              "attributes": new.get("attributes", {})}), flush=True)


if __name__ == "__main__":
    asyncio.run(watch(sys.argv[1], sys.argv[2], sys.argv[3]))
