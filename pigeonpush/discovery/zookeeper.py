"""Discovery on ZooKeeper, through kazoo.

kazoo runs threads of its own (a connection thread, callback workers). They
meet Twisted in two ways only: every kazoo callback (the state listener, watch
functions) does nothing but ``reactor.callFromThread``, and every blocking kazoo
call runs in the reactor's thread pool. All state lives on the reactor thread;
the only values read across threads are "stopped" flags, which tell a kazoo
watch to end itself.

Own nodes are ephemeral: they vanish when the session ends. After a session
loss (kazoo's LOST, then a new session) every own node is created again with its
latest data. Watches are kazoo's ChildrenWatch and DataWatch recipes, which
re-arm themselves on every reconnection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    ConnectionLoss,
    KazooException,
    NodeExistsError,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KazooState
from kazoo.recipe.watchers import ChildrenWatch, DataWatch
from kazoo.retry import KazooRetry
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from pigeonpush.discovery.interface import (
    KINDS,
    DiscoveryClosed,
    Node,
    NodeRegistration,
    Watch,
    WatchCallback,
)
from pigeonpush.discovery.liveset import EMPTY, LiveSet
from pigeonpush.discovery.naming import check_kind, check_node_id, kind_path, node_path
from pigeonpush.discovery.nodedata import decode_data, encode_data
from pigeonpush.discovery.oneshot import OneShot
from pigeonpush.discovery.ratelimit import RateLimitedWriter
from pigeonpush.discovery.spec import check_zookeeper_hosts

T = TypeVar("T")

#: Longest pause between two attempts to reach ZooKeeper (kazoo's default is an hour).
RECONNECT_MAX_DELAY = 2.0
#: Shortest pause before a failed write of an own node is tried again.
MIN_RETRY_DELAY = 1.0
#: How often writing an own node may find it changed under us before giving up for now.
UPSERT_ATTEMPTS = 5


class NodeContention(Exception):
    """An own node kept changing while this process wrote it (two processes use
    the same node id); the write is retried later."""


#: Errors of a connection or session that comes back: writes retry after them.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionLoss,
    OperationTimeoutError,
    SessionExpiredError,
    KazooTimeoutError,
    NodeContention,
)


class ZooKeeperDiscovery:
    """Discovery on a ZooKeeper ensemble.

    ``hosts`` is a kazoo hosts string (``host:port[,host:port...][/chroot]``);
    nodes live at ``/pigeonpush/<kind>/<node-id>`` below the chroot. ``reactor``
    must provide time and threads (any real reactor does). ``update`` writes at
    most once per ``min_update_interval`` seconds per node. ``session_timeout``
    is asked of ZooKeeper (which bounds it) and also bounds every single call.

    Nothing connects until ``start`` (which ``register`` and ``watch`` call);
    while ZooKeeper is unreachable they wait, and a warning is logged every
    ``session_timeout`` seconds.
    """

    log = Logger()

    def __init__(
        self,
        hosts: str,
        reactor: IReactorTime,
        *,
        min_update_interval: float = 1.0,
        session_timeout: float = 10.0,
    ) -> None:
        check_zookeeper_hosts(hosts)
        if min_update_interval < 0:
            raise ValueError("min_update_interval must be >= 0")
        if session_timeout <= 0:
            raise ValueError("session_timeout must be > 0")
        self._hosts = hosts
        self._clock = reactor
        threads = IReactorThreads(reactor, None)
        if threads is None:
            raise TypeError("the ZooKeeper backend needs a reactor with threads (IReactorThreads)")
        self._threads = threads
        self._min_update_interval = min_update_interval
        self._session_timeout = session_timeout
        # Read by kazoo's connection thread, between two connection attempts.
        self._stopping = threading.Event()
        self._zk = KazooClient(
            hosts=hosts,
            timeout=session_timeout,
            connection_retry=KazooRetry(
                max_tries=-1,
                delay=0.1,
                max_delay=RECONNECT_MAX_DELAY,
                interrupt=self._stopping.is_set,
            ),
            command_retry=KazooRetry(max_tries=-1, delay=0.1, max_delay=RECONNECT_MAX_DELAY),
        )
        self._client_started = False
        self._ever_connected = False
        self._session_lost = False
        self._connected: OneShot[None] = OneShot()
        self._started: OneShot[None] | None = None
        self._closing: OneShot[None] | None = None
        self._connect_warning: IDelayedCall | None = None
        self._registrations: dict[tuple[str, str], _ZooKeeperRegistration] = {}
        self._kinds: dict[str, _KindWatcher] = {}

    @property
    def hosts(self) -> str:
        return self._hosts

    @property
    def session_timeout(self) -> float:
        """The session timeout asked of ZooKeeper, in seconds."""
        return self._session_timeout

    # -- the Discovery interface ------------------------------------------------

    def start(self) -> Deferred[None]:
        if self._closing is not None:
            return fail(DiscoveryClosed("discovery is closed"))
        if self._started is None:
            self._started = OneShot()
            Deferred.fromCoroutine(self._start()).addBoth(self._start_finished)
        return self._started.when_fired()

    def register(
        self, kind: str, node_id: str, data: Mapping[str, Any]
    ) -> Deferred[NodeRegistration]:
        check_kind(kind)
        check_node_id(node_id)
        encoded = encode_data(data)
        if self._closing is not None:
            return fail(DiscoveryClosed("discovery is closed"))
        if (kind, node_id) in self._registrations:
            raise ValueError(f"{kind} node {node_id!r} is already registered by this process")
        registration = _ZooKeeperRegistration(self, kind, node_id)
        self._registrations[(kind, node_id)] = registration
        self.start().addCallbacks(lambda _: registration.begin(encoded), registration.abandon)
        created: Deferred[Any] = registration.created.when_fired()
        return created

    def watch(self, kind: str, callback: WatchCallback) -> Deferred[Watch]:
        check_kind(kind)
        if self._closing is not None:
            return fail(DiscoveryClosed("discovery is closed"))
        watcher = self._kinds.get(kind)
        if watcher is None:
            watcher = self._kinds[kind] = _KindWatcher(self, kind)
            watcher.begin()
        subscribed: Deferred[Any] = watcher.live_set.subscribe(callback)
        return subscribed

    def live(self, kind: str) -> Mapping[str, Node]:
        watcher = self._kinds.get(check_kind(kind))
        return EMPTY if watcher is None else watcher.live_set.current

    def close(self) -> Deferred[None]:
        if self._closing is None:
            self._closing = OneShot()
            Deferred.fromCoroutine(self._close()).addBoth(self._closing.fire)
        return self._closing.when_fired()

    # -- connecting and closing ------------------------------------------------

    async def _start(self) -> None:
        if not self._client_started:
            self._client_started = True
            self._zk.add_listener(self._state_from_thread)
            self._connect_warning = self._clock.callLater(
                self._session_timeout, self._still_connecting
            )
            # Only starts kazoo's threads; the session is reported by the listener.
            self._zk.start_async()
        await self._connected.when_fired()
        await self._in_thread(self._ensure_parents)

    def _start_finished(self, result: Failure | None) -> None:
        started = self._started
        assert started is not None
        if isinstance(result, Failure):
            if self._closing is not None:
                result = Failure(DiscoveryClosed("discovery closed while connecting"))
            else:
                self._started = None  # the next start() tries again
        started.fire(result)

    def _ensure_parents(self) -> None:
        zk = self._zk
        if zk.chroot and zk.retry(zk.exists, "/") is None:
            self._create_chroot(zk.chroot)
        for kind in KINDS:
            zk.retry(zk.ensure_path, kind_path(kind))

    def _create_chroot(self, chroot: str) -> None:
        # A chrooted client cannot reach above its chroot: a short-lived plain
        # one creates it (once, on a fresh ensemble).
        servers = self._hosts.partition("/")[0]
        client = KazooClient(hosts=servers, timeout=self._session_timeout)
        client.start(timeout=self._session_timeout)
        try:
            client.ensure_path(chroot)
        finally:
            client.stop()
            client.close()

    def _still_connecting(self) -> None:
        self.log.warn("Still connecting to ZooKeeper at {hosts}", hosts=self._hosts)
        self._connect_warning = self._clock.callLater(self._session_timeout, self._still_connecting)

    def _cancel_connect_warning(self) -> None:
        if self._connect_warning is not None and self._connect_warning.active():
            self._connect_warning.cancel()
        self._connect_warning = None

    async def _close(self) -> None:
        self._cancel_connect_warning()
        self._connected.fire(Failure(DiscoveryClosed("discovery closed before connecting")))
        for watcher in list(self._kinds.values()):
            watcher.stop()
        try:
            registrations = list(self._registrations.values())
            if registrations:
                await gatherResults(
                    [registration.unregister() for registration in registrations],
                    consumeErrors=True,
                )
        finally:
            if self._client_started:
                self._zk.remove_listener(self._state_from_thread)
                self._stopping.set()
                await self._in_thread(self._stop_client)

    def _stop_client(self) -> None:
        # Ending the session removes its ephemeral nodes at once, and stop()
        # joins kazoo's threads.
        self._zk.stop()
        self._zk.close()

    # -- kazoo's state, on the reactor -------------------------------------------

    def _state_from_thread(self, state: str) -> None:
        """kazoo's listener (its connection thread): hand over, nothing else."""
        self._threads.callFromThread(self._state_changed, state)

    def _state_changed(self, state: str) -> None:
        if self._closing is not None:
            return
        if state == KazooState.CONNECTED:
            if not self._ever_connected:
                self._ever_connected = True
                self._cancel_connect_warning()
                self.log.info("Connected to ZooKeeper at {hosts}", hosts=self._hosts)
                self._connected.fire(None)
            elif self._session_lost:
                self._session_lost = False
                self.log.info(
                    "New ZooKeeper session; registering {count} node(s) again",
                    count=len(self._registrations),
                )
                for registration in self._registrations.values():
                    registration.rewrite()
            else:
                self.log.info("Reconnected to ZooKeeper at {hosts}", hosts=self._hosts)
        elif state == KazooState.SUSPENDED:
            self.log.warn(
                "Connection to ZooKeeper at {hosts} lost; reconnecting", hosts=self._hosts
            )
        elif state == KazooState.LOST and self._ever_connected:
            self._session_lost = True
            self.log.warn(
                "ZooKeeper session expired: own nodes are gone until the new session "
                "registers them again"
            )

    # -- blocking kazoo calls, in the thread pool --------------------------------

    def _in_thread(self, function: Callable[..., T], *args: object) -> Deferred[T]:
        """Run a blocking kazoo call in the reactor's thread pool."""
        return deferToThreadPool(self._threads, self._threads.getThreadPool(), function, *args)

    def _wait(self, result: Any) -> Any:
        # Every single call is bounded: a thread never waits forever on a lost server.
        return result.get(timeout=self._session_timeout)

    def _upsert_node(self, path: str, value: bytes) -> bool:
        """Make ``path`` this session's ephemeral node holding ``value`` (pool
        thread). True when a node left by another session had to be replaced."""
        zk = self._zk
        replaced = False
        for _ in range(UPSERT_ATTEMPTS):
            stat = self._wait(zk.exists_async(path))
            if stat is None:
                try:
                    self._wait(zk.create_async(path, value, ephemeral=True, makepath=True))
                except NodeExistsError:
                    continue
                return replaced
            session = zk.client_id
            if session is not None and stat.ephemeralOwner == session[0]:
                try:
                    self._wait(zk.set_async(path, value, version=stat.version))
                except (NoNodeError, BadVersionError):
                    continue
                return replaced
            # Left by an earlier session with this node id (a restart before the
            # old session expired): the newest registration of an id wins.
            try:
                self._wait(zk.delete_async(path, version=stat.version))
                replaced = True
            except (NoNodeError, BadVersionError):
                pass
        raise NodeContention(f"{path} kept changing while this process wrote it")

    def _delete_own_node(self, path: str) -> bool:
        """Delete ``path`` if this session owns it (pool thread); True if deleted."""
        zk = self._zk
        stat = self._wait(zk.exists_async(path))
        session = zk.client_id
        if stat is None or session is None or stat.ephemeralOwner != session[0]:
            return False
        try:
            self._wait(zk.delete_async(path))
        except NoNodeError:
            return False
        return True

    # -- bookkeeping for registrations and watchers ------------------------------

    def _forget(self, registration: _ZooKeeperRegistration) -> None:
        key = (registration.kind, registration.node_id)
        if self._registrations.get(key) is registration:
            del self._registrations[key]

    def _forget_watcher(self, watcher: _KindWatcher) -> None:
        if self._kinds.get(watcher.kind) is watcher:
            del self._kinds[watcher.kind]


class _ZooKeeperRegistration:
    """This process's node: written through a rate-limited writer, created again
    after a session loss, deleted by ``unregister``."""

    __slots__ = ("_owner", "_unregistering", "_writer", "created", "kind", "node_id", "path")

    log = Logger()

    def __init__(self, owner: ZooKeeperDiscovery, kind: str, node_id: str) -> None:
        self._owner = owner
        self.kind = kind
        self.node_id = node_id
        self.path = node_path(kind, node_id)
        self._writer = RateLimitedWriter(
            owner._clock,
            owner._min_update_interval,
            self._write,
            self._write_failed,
            retry_delay=max(MIN_RETRY_DELAY, owner._min_update_interval),
        )
        #: fires with this registration once the node first exists
        self.created: OneShot[NodeRegistration] = OneShot()
        self._unregistering: OneShot[None] | None = None

    def begin(self, encoded: bytes) -> None:
        self._writer.submit(encoded, urgent=True)

    def abandon(self, failure: Failure) -> None:
        """The node cannot be created (connecting failed, or ZooKeeper refused)."""
        self._owner._forget(self)
        self._writer.stop()
        self.created.fire(failure)

    def update(self, data: Mapping[str, Any]) -> None:
        self._writer.submit(encode_data(data))

    def rewrite(self) -> None:
        self._writer.rewrite()

    def unregister(self) -> Deferred[None]:
        if self._unregistering is None:
            self._unregistering = OneShot()
            Deferred.fromCoroutine(self._unregister()).addBoth(self._unregistering.fire)
        return self._unregistering.when_fired()

    async def _unregister(self) -> None:
        self._owner._forget(self)
        ever_written = self._writer.latest is not None
        await self._writer.stop()
        self.created.fire(Failure(DiscoveryClosed("unregistered before the node was created")))
        if not ever_written:
            return
        try:
            await self._owner._in_thread(self._owner._delete_own_node, self.path)
        except (KazooException, KazooTimeoutError) as e:
            self.log.warn(
                "Could not remove {path} ({error}); it goes when the session ends",
                path=self.path,
                error=repr(e),
            )

    def _write(self, encoded: bytes) -> Deferred[None]:
        writing = self._owner._in_thread(self._owner._upsert_node, self.path, encoded)
        if self.created.fired:
            return writing.addCallback(self._written)
        return writing.addCallbacks(self._written, self._first_write_failed)

    def _written(self, replaced: bool) -> None:
        if replaced:
            self.log.warn(
                "Replaced {path}, left by another ZooKeeper session with this node id",
                path=self.path,
            )
        self.created.fire(self)

    def _first_write_failed(self, failure: Failure) -> Failure | None:
        if failure.check(*TRANSIENT_ERRORS) and self._owner._closing is None:
            return failure  # the writer retries
        self.abandon(failure)
        return None

    def _write_failed(self, failure: Failure) -> None:
        if failure.check(*TRANSIENT_ERRORS):
            self.log.warn(
                "Could not write {path} ({error}); retrying",
                path=self.path,
                error=failure.getErrorMessage() or repr(failure.value),
            )
        else:
            self.log.failure("Could not write {path}; retrying", failure=failure, path=self.path)


class _Child:
    """One child znode being watched: its DataWatch ends itself once ``stopped``."""

    __slots__ = ("data_watch", "name", "node", "stopped")

    def __init__(self, name: str) -> None:
        self.name = name
        self.node: Node | None = None
        self.stopped = False
        self.data_watch: DataWatch | None = None


class _KindWatcher:
    """The live set of one kind: a ChildrenWatch on ``/pigeonpush/<kind>`` and a
    DataWatch per child. A child is live once its data was read and is valid."""

    __slots__ = (
        "_children",
        "_children_seen",
        "_owner",
        "_pending",
        "_stopped",
        "kind",
        "live_set",
        "path",
    )

    log = Logger()

    def __init__(self, owner: ZooKeeperDiscovery, kind: str) -> None:
        self._owner = owner
        self.kind = kind
        self.path = kind_path(kind)
        self.live_set = LiveSet(kind, owner._clock)
        self._children: dict[str, _Child] = {}
        self._children_seen = False
        self._pending = 0  # DataWatch batches being set up
        self._stopped = False

    def begin(self) -> None:
        starting = self._owner.start()
        starting.addCallback(
            lambda _: self._owner._in_thread(
                ChildrenWatch, self._owner._zk, self.path, self._children_from_thread
            )
        )
        starting.addCallbacks(self._children_watch_started, self._failed)

    def stop(self) -> None:
        self._stopped = True
        for child in self._children.values():
            child.stopped = True
        self.live_set.close()

    def _children_watch_started(self, _: object) -> None:
        # The first children were handed over before the constructor returned.
        if not self._children_seen and not self._stopped:
            self._failed(Failure(NoNodeError(f"{self.path} does not exist")))

    def _failed(self, failure: Failure) -> None:
        if self._stopped:
            return
        self._owner._forget_watcher(self)
        self._stopped = True
        for child in self._children.values():
            child.stopped = True
        if self._owner._closing is not None:
            failure = Failure(DiscoveryClosed("discovery closed before the first set"))
        self.live_set.close(failure)

    # kazoo threads: hand over, nothing else.

    def _children_from_thread(self, children: list[str]) -> bool | None:
        if self._stopped:
            return False
        self._owner._threads.callFromThread(self._children_changed, list(children))
        return None

    def _data_from_thread(
        self, child: _Child, data: bytes | None, stat: object, event: object = None
    ) -> bool | None:
        if child.stopped:
            return False
        self._owner._threads.callFromThread(self._data_changed, child, data)
        return None

    def _watch_data(self, children: list[_Child]) -> list[tuple[_Child, DataWatch]]:
        """Set up one DataWatch per child (pool thread: each reads the data once)."""
        return [
            (
                child,
                DataWatch(
                    self._owner._zk,
                    f"{self.path}/{child.name}",
                    partial(self._data_from_thread, child),
                ),
            )
            for child in children
            if not child.stopped
        ]

    # the reactor

    def _children_changed(self, names: list[str]) -> None:
        if self._stopped:
            return
        self._children_seen = True
        current = set(names)
        for gone in self._children.keys() - current:
            self._retire(self._children.pop(gone))
        added = [_Child(name) for name in sorted(current - self._children.keys())]
        for child in added:
            self._children[child.name] = child
        if added:
            self._pending += 1
            self._owner._in_thread(self._watch_data, added).addBoth(self._data_watches_started)
        self._publish()

    def _data_watches_started(self, result: list[tuple[_Child, DataWatch]] | Failure) -> None:
        self._pending -= 1
        if isinstance(result, Failure):
            if not self._stopped:
                self.log.failure(
                    "Could not watch the nodes of {path}", failure=result, path=self.path
                )
        else:
            for child, data_watch in result:
                child.data_watch = data_watch
                if child.stopped:
                    self._retire(child)
        self._publish()

    def _retire(self, child: _Child) -> None:
        child.stopped = True
        data_watch, child.data_watch = child.data_watch, None
        if data_watch is not None and not self._stopped:
            # kazoo ends a DataWatch when its function next returns False, but a
            # node that stays gone never calls it again: the watch (and a thread
            # per reconnection) would stay forever. End it as that return would.
            data_watch._stopped = True
            self._owner._zk.remove_listener(data_watch._session_watcher)

    def _data_changed(self, child: _Child, data: bytes | None) -> None:
        if self._stopped or child.stopped:
            return
        if data is None:
            child.node = None
        else:
            try:
                child.node = Node(self.kind, child.name, decode_data(data))
            except ValueError as e:
                child.node = None
                self.log.warn(
                    "Ignoring {path}: {error}", path=f"{self.path}/{child.name}", error=str(e)
                )
        self._publish()

    def _publish(self) -> None:
        if self._stopped:
            return
        if not self.live_set.ready and (not self._children_seen or self._pending):
            return  # the first set waits until every child's data was read
        nodes = {
            name: child.node for name, child in self._children.items() if child.node is not None
        }
        self.live_set.publish(nodes)
