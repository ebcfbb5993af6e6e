"""Many concurrent 1 MiB writes at a real cluster: the proxy sheds what it can't take with a
fast 503 overloaded, no link to a node resets, and what it acknowledged reads back."""

from __future__ import annotations

import asyncio
import statistics

import aiohttp
import pytest

MiB = 1024 * 1024
CLIENTS = 100


async def _link_errors(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(f"{url}/cluster") as response:
        return sum(node["errors"] for node in (await response.json())["nodes"])


@pytest.mark.slow
async def test_concurrent_large_writes_are_acknowledged_or_shed_and_links_hold(cluster3):
    url = cluster3.url
    loop = asyncio.get_running_loop()
    answers: list[tuple[str, int, dict, float]] = []

    async def client(session: aiohttp.ClientSession, c: int, rounds: int) -> None:
        for i in range(rounds):
            key = f"big-{c}-{i}"
            started = loop.time()
            async with session.put(f"{url}/kv/{key}", data=bytes([c]) * MiB) as response:
                body = await response.json(content_type=None)
                answers.append((key, response.status, {"retry": response.headers.get(
                    "Retry-After"), **body}, loop.time() - started))

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=timeout) as session:
        before = await _link_errors(session, url)
        await asyncio.gather(*(client(session, c, 2) for c in range(CLIENTS)))
        assert await _link_errors(session, url) == before, "a link to a node reset"

        ok = [key for key, status, _, _ in answers if status == 200]
        shed = [(body, took) for _, status, body, took in answers
                if status == 503 and body["error"] == "overloaded"]
        others = [(status, body.get("error")) for _, status, body, _ in answers
                  if status != 200 and (status != 503 or body["error"] != "overloaded")]
        assert len(answers) == 2 * CLIENTS
        assert ok, "no write got through"
        # A timeout here and there on a busy machine, but no storm of them: what the
        # proxy can't take in time it refuses at once.
        assert len(others) <= len(answers) // 10, others
        assert shed, "nothing was shed: the test did not overload the proxy"
        assert all(body["retry"].isdigit() and int(body["retry"]) >= 1 and body["message"]
                   for body, _ in shed)
        assert statistics.median(took for _, took in shed) < 1.0  # not queued first

        for key in ok:
            c = int(key.split("-")[1])
            assert await _read(session, f"{url}/kv/{key}") == bytes([c]) * MiB, key


async def _read(session: aiohttp.ClientSession, url: str) -> bytes | int:
    """The value, or the status of the last try: a read may time out on a machine this
    busy (the 1 MiB replies of three replicas), which is not what is tested here."""
    for _ in range(3):
        async with session.get(url) as response:
            if response.status not in (503, 504):
                return await response.read() if response.status == 200 else response.status
    return response.status
