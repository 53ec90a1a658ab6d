import asyncio

from chatserver.locks import KeyedLock


async def test_lock_table_holds_only_keys_in_use() -> None:
    locks = KeyedLock()

    async def use(key: str) -> None:
        async with locks.hold(key):
            await asyncio.sleep(0)

    await asyncio.gather(*(use(f"session-{n % 100}") for n in range(1000)))
    assert len(locks) == 0


async def test_holders_of_one_key_run_one_at_a_time_and_other_keys_do_not_wait() -> None:
    locks = KeyedLock()
    inside: list[str] = []
    peak = 0

    async def use(key: str) -> None:
        nonlocal peak
        async with locks.hold(key):
            inside.append(key)
            peak = max(peak, inside.count("a"))
            await asyncio.sleep(0)
            inside.remove(key)

    await asyncio.gather(*(use("a") for _ in range(20)), *(use(f"b{n}") for n in range(5)))
    assert peak == 1
    assert not locks.locked("a") and len(locks) == 0
