"""The Redis tier's state, and what happens when Redis goes away and comes back.

Every Redis call has a bounded timeout. On the first failure the tier goes ``DOWN`` (one
warning): the local tier is emptied and bypassed (invalidations from other processes may be
missed), reads and writes go straight to the inner store, and the keys written meanwhile are
remembered. A watcher task resubscribes; the tier then *catches up* (those keys are
invalidated in Redis and announced to the other processes, while new writes announce
themselves), the local tier is flushed, and only then is the tier ``UP`` again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable

from kvsessions.wrappers.cache.local import LocalTier
from kvsessions.wrappers.cache.redis_tier import TIER_ERRORS, RedisTier

__all__ = ["MissedWrites", "TierMonitor", "TierState"]

logger = logging.getLogger("kvsessions.wrappers.cache")


class TierState(enum.Enum):
    """Where the Redis tier stands. Which tiers a read may use and whether a write is
    announced follow from it alone."""

    #: No Redis configured: the local tier alone (correct only for a single writer).
    LOCAL_ONLY = "local only"
    #: Opened, Redis not reached yet: both tiers bypassed, writes remembered.
    CONNECTING = "connecting"
    #: Redis failed: both tiers bypassed, writes remembered (a warning was logged).
    DOWN = "down"
    #: Redis reached again: the remembered writes are being announced and new writes announce
    #: themselves, but reads still bypass both tiers.
    CATCHING_UP = "catching up"
    #: Both tiers in use.
    UP = "up"
    CLOSED = "closed"

    @property
    def announces_writes(self) -> bool:
        return self in (TierState.CATCHING_UP, TierState.UP)

    @property
    def serves_local(self) -> bool:
        """Whether the local tier may serve: only while invalidations surely arrive."""
        return self in (TierState.UP, TierState.LOCAL_ONLY)


class MissedWrites:
    """Keys written while Redis could not be told: for each, what the writes did to its
    deadline and the tokens of their marks that may be in Redis. Past ``limit`` keys, only
    the fact that everything must be invalidated."""

    def __init__(self, limit: int) -> None:
        self.keys: dict[str, tuple[str, str]] = {}  # key -> (deadline argument, marks)
        self.overflowed = False
        self._limit = limit

    def __len__(self) -> int:
        return len(self.keys)

    def __bool__(self) -> bool:
        return bool(self.keys) or self.overflowed

    def add(self, entries: list[tuple[str, str, str]]) -> None:
        if self.overflowed:
            return
        for key, deadline, marks in entries:
            known = self.keys.get(key)
            if known is not None:
                # A write that changed nothing ('?') keeps what an earlier one did.
                deadline = known[0] if deadline == "?" else deadline
                marks = f"{known[1]} {marks}".strip()
            self.keys[key] = (deadline, marks)
        if len(self.keys) > self._limit:
            self.keys.clear()
            self.overflowed = True

    def take(self) -> list[tuple[str, str, str]]:
        batch = [(key, deadline, marks) for key, (deadline, marks) in self.keys.items()]
        self.keys.clear()
        return batch

    def put_back(self, entries: list[tuple[str, str, str]]) -> None:
        """Entries taken out whose announcement failed (those added since are newer)."""
        newer = self.keys
        self.keys = {}
        self.add(entries)
        self.add([(key, deadline, marks) for key, (deadline, marks) in newer.items()])


class TierMonitor:
    """Owns the tier state: announces writes while it can, remembers them while it cannot,
    and runs the watcher that keeps the subscription and brings the tier back."""

    def __init__(self, redis: RedisTier | None, local: LocalTier, counts: dict[str, int], *,
                 retry_interval: float, max_missed: int, scrub: Callable[[str], str],
                 inner_repr: Callable[[], str], tier_name: str) -> None:
        self.redis = redis
        self.local = local
        self._counts = counts
        self._retry_interval = retry_interval
        self.missed = MissedWrites(max_missed)
        self._scrub = scrub
        self._inner_repr = inner_repr
        self._tier_name = tier_name
        #: Whether the current outage was logged (so it is logged once, and its end too).
        self._outage_logged = False
        self._watcher: asyncio.Task[None] | None = None
        self.state = TierState.CONNECTING
        self.reset()

    def enter(self, state: TierState) -> None:
        self.state = state
        self.local.serving = self.local.enabled and state.serves_local

    # ------------------------------------------------------------------ lifecycle

    async def start(self, first_wait: float) -> None:
        """Start the watcher and wait up to ``first_wait`` s for its first attempt; if Redis
        does not answer by then, go on without it (the watcher keeps trying)."""
        if self.redis is None:
            return
        first_attempt = asyncio.Event()
        self._watcher = asyncio.get_running_loop().create_task(self._watch(first_attempt))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(first_wait):
                await first_attempt.wait()

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    def abandon(self) -> None:
        """The watcher's event loop has stopped: forget the watcher and, as after
        ``reset``, remember writes and serve no tier until a new watcher brings Redis back."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None and not watcher.done():
            with contextlib.suppress(RuntimeError):  # its loop closed: it never runs again
                watcher.get_loop().call_soon_threadsafe(watcher.cancel)
        self.reset()

    def reset(self) -> None:
        """Back to the state before ``start`` (an open that failed half way)."""
        if self.redis is not None:
            self.redis.discard_fills()
        self.local.clear()
        self.enter(TierState.LOCAL_ONLY if self.redis is None else TierState.CONNECTING)

    def close(self) -> None:
        if self.redis is not None:
            self.redis.discard_fills()
        self.enter(TierState.CLOSED)
        self.local.clear()

    # ------------------------------------------------------------------ writes

    async def mark(self, keys: list[str]) -> str:
        """Before an inner write: mark its keys as being written (see ``protocol.py``); the
        mark's token, to remove afterwards ('' when none was sent)."""
        if self.redis is None or not self.state.announces_writes:
            return ""
        token = self.redis.writer.new_tombstone()
        try:
            await self.redis.mark(keys, token)
        except TIER_ERRORS as exc:
            self.down(exc)  # the marks may have landed: the announcement removes them
        return token.decode()

    async def announce(self, entries: list[tuple[str, str, str]]) -> None:
        """After an inner write: tombstone the Redis copies, remove the write's marks, tell
        the other processes. When Redis cannot be told now, the keys are remembered and told
        on recovery."""
        if self.redis is None:
            return
        if self.state.announces_writes:
            try:
                await self.redis.invalidate(entries)
                return
            except TIER_ERRORS as exc:
                self.down(exc)
        self.missed.add(entries)

    async def release(self, keys: list[str], marks: str) -> None:
        """After an inner write that surely did not land: only remove its marks."""
        if self.redis is None or not marks:
            return
        if self.state.announces_writes:
            try:
                await self.redis.release(keys, marks)
                return
            except TIER_ERRORS as exc:
                self.down(exc)
        self.missed.add([(key, "?", marks) for key in keys])

    # ------------------------------------------------------------------ outage

    def down(self, exc: BaseException) -> None:
        """A Redis call failed: bypass both tiers until the watcher brings Redis back."""
        self._counts["redis_errors"] += 1
        if self.state is not TierState.CLOSED:
            self.enter(TierState.DOWN)
        if self.redis is not None:
            self.redis.discard_fills()
        self.local.clear()
        if not self._outage_logged:
            self._outage_logged = True
            self._counts["outages"] += 1
            logger.warning(
                "Redis cache tier %s unavailable (%s: %s); reading and writing %s directly "
                "until it is back", self._tier_name, type(exc).__name__,
                self._scrub(str(exc)) or "no detail", self._inner_repr())

    async def _recover(self) -> None:
        """Announce what was missed, flush the local tier, then use the tier again."""
        assert self.redis is not None
        await self.redis.ping()
        # From now on writes announce themselves; what was missed before is sent here.
        self.enter(TierState.CATCHING_UP)
        while self.missed:
            if self.missed.overflowed:
                self.missed.overflowed = False
                self.missed.keys.clear()
                await self.redis.invalidate_everything()
                continue
            batch = self.missed.take()
            try:
                await self.redis.invalidate(batch)
            except BaseException:
                self.missed.put_back(batch)
                raise
        # No await from here on: nothing can slip between the flush and the switch.
        self.local.clear()
        self.enter(TierState.UP)
        if self._outage_logged:
            self._outage_logged = False
            logger.info("Redis cache tier %s is back; local tier flushed", self._tier_name)

    async def _watch(self, first_attempt: asyncio.Event) -> None:
        """Keep the subscription to the channel, and bring the tier back."""
        try:
            await self._keep_watching(first_attempt)
        except asyncio.CancelledError:
            # Stopped, or its event loop is ending (``asyncio.run`` cancels what is left):
            # invalidations no longer arrive, so the local tier must not serve any more. (A
            # watcher abandoned for another loop's has nothing left to say.)
            if self._watcher is asyncio.current_task() and self.state is not TierState.CLOSED:
                self.enter(TierState.CONNECTING)
                self.local.clear()
            raise

    async def _keep_watching(self, first_attempt: asyncio.Event) -> None:
        assert self.redis is not None
        timeout = self.redis.timeout
        channel = self.redis.keys.channel
        while True:
            pubsub = self.redis.pubsub()
            try:
                async with asyncio.timeout(timeout * 2):
                    await pubsub.subscribe(channel)
                    while True:
                        message = await pubsub.get_message(timeout=timeout)
                        if message is None:
                            raise TimeoutError("no confirmation of the subscription")
                        if message["type"] == "subscribe":
                            break
                await self._recover()
                first_attempt.set()
                while self.state is TierState.UP:
                    message = await pubsub.get_message(timeout=self._retry_interval)
                    if message is None:
                        continue
                    if message["type"] == "message":
                        self._on_message(message["data"])
                    elif message["type"] == "subscribe":
                        # The client reconnected by itself: messages may have been lost.
                        self.local.clear()
            except Exception as exc:  # a down or slow server, or anything unexpected
                self.down(exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            first_attempt.set()
            await asyncio.sleep(self._retry_interval)

    def _on_message(self, data: bytes) -> None:
        assert self.redis is not None
        message = self.redis.writer.read_message(data)
        if message is None:
            return
        self._counts["invalidations_received"] += 1
        flush, keys = message
        if flush:
            self.local.clear()
            return
        for key in keys:
            self.local.drop(key)
