"""gunicorn's gevent worker for Sluice: a graceful stop that waits for running requests only,
and (HeadWaitMixin, app/headwait.py) a bounded wait for request heads and JSON error pages.

gunicorn's own gevent worker keeps serving a keep-alive connection until its client sends
another request or `keepalive` (75 s) passes, and its graceful stop waits for every open
connection: one idle `requests.Session` or browser tab held the stop for the whole grace
period, until the master killed the worker (usage records still queued were lost). Here a
stop closes the idle connections at once, and every other one as soon as its request ends.

When the master dies (SIGKILL, out of memory), gunicorn's gevent worker notices within a second
("Parent changed") and exits at once, cutting every running stream without an error event,
[DONE] or usage record. Here that is a graceful stop like SIGTERM: the running streams get the
grace period (ending with their error event near its end), usage is written, then it exits.

A worker accepts up to ACCEPT_BATCH waiting connections per turn of its event loop, not one, and sends a
response's head with its first body bytes (app/firstwrite.py).

Every worker also keeps a liveness record beside its max_parallel slots, beating every second
from before its first request until it exits, and sweeps the records of the deployment: the
slots of a worker silent for over 10 s (its whole instance crashed, so no master freed them)
are freed within seconds (app/storage/liveness.py).

gunicorn.conf.py names this class in `worker_class`; the master imports it (gunicorn imports
its own gevent worker there too), the worker patches with gevent before the app loads.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import TYPE_CHECKING, Any

import gevent
from gevent.server import StreamServer
from gunicorn.http import wsgi
from gunicorn.workers import ggevent
from gunicorn.workers.ggevent import GeventWorker

from app.aborts import BodyCut
from app.config import ConfigError
from app.firstwrite import FirstWriteResponse
from app.headwait import HeadWaitMixin
from app.services.lifecycle import begin_shutdown

if TYPE_CHECKING:  # the master imports this module: no database or metrics libraries there
    from app.scheduler import Scheduler

SWEEP = 0.5  # seconds between looks for idle connections while the worker stops
BOOT_WAIT = 60.0  # seconds a reload signalled while the app loads waits for it
# Connections accepted per turn of a worker's event loop at most. gunicorn's gevent worker takes one per
# turn when there are several workers (to spread them between the workers), but a turn of a worker
# relaying thousands of streams takes tens of milliseconds: at 10,000 streams on 2 workers, connections
# waited in the listen queue for up to 7 s (docs/benchmarks.md "Capacity"). gevent's own default is 100;
# a batch is taken only when that many are waiting, and the other workers keep accepting beside it.
ACCEPT_BATCH = 64


class AcceptingServer(StreamServer):
    """gevent's StreamServer with `max_accept` fixed at ACCEPT_BATCH: gunicorn sets it to 1 after building
    the server, inside GeventWorker.run, so the setting it makes is ignored here."""

    @property  # type: ignore[override]  # a class attribute in gevent
    def max_accept(self) -> int:
        return ACCEPT_BATCH

    @max_accept.setter
    def max_accept(self, _value: int) -> None:
        pass


# GeventWorker.run builds its servers from this module-level name (in the worker process; the master builds none).
ggevent.StreamServer = AcceptingServer
# And gunicorn's request handling builds each response from this one (app/firstwrite.py).
wsgi.Response = FirstWriteResponse  # type: ignore[misc]


class GracefulGeventWorker(HeadWaitMixin, GeventWorker):
    # Keyed by the connection's greenlet: the socket object changes on the way down (HeadWaitMixin wraps it).
    _connections: dict[Any, socket.socket]  # open client connections
    _busy: set[Any]  # those serving a request now
    _quitting = False
    _sweeper: Any = None  # the greenlet closing idle connections while the worker stops
    _keeper: Scheduler | None = None  # beats and sweeps the liveness records (app/storage/liveness.py)

    def init_process(self) -> None:
        self._connections, self._busy = {}, set()
        super().init_process()

    def init_signals(self) -> None:
        super().init_signals()
        # gunicorn leaves SIGHUP at its default in workers, which ends the process: here it reloads the config.
        signal.signal(signal.SIGHUP, self.handle_hup)
        signal.siginterrupt(signal.SIGHUP, False)  # as gunicorn does for TERM: running requests go on

    def handle_hup(self, sig: int, frame: Any) -> None:
        """SIGHUP (from the master, which validated the file): reload the config in a greenlet, not here."""
        gevent.spawn(self._reload_config)

    def _reload_config(self) -> None:
        from app.services.reload import reload  # the master imports this module: no requests (ssl) there
        from app.storage.db import StorageError

        for _ in range(int(BOOT_WAIT / 0.1)):  # signalled while loading: the app may have read the old file
            if self.booted or not self.alive:
                break
            gevent.sleep(0.1)
        gateway = self._gateway()
        if gateway is None or not self.alive:
            return
        try:
            reload(gateway)
        except ConfigError:
            return  # logged by reload(); the running config stays
        except StorageError as exc:
            self.log.error("config reload failed, the running config stays: %s", exc)

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        current = gevent.getcurrent()
        self._connections[current] = client
        try:
            super().handle(listener, client, addr)
        finally:
            del self._connections[current]

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> bool:
        current = gevent.getcurrent()
        self._busy.add(current)
        try:
            keep_open = super().handle_request(listener_name, req, sock, addr)
        except BodyCut as exc:
            # An upstream broke mid-way through a raw answer (audio): cut, as it has no way to say why.
            self.log.info("cut a raw answer short: the upstream failed mid-body (%s)", exc.code)
            raise StopIteration from None
        except TimeoutError:
            # A client that stopped reading ran out its write bound (the request's deadline): the
            # request is recorded already and nothing failed here, so a line, not a traceback.
            self.log.info("closed a connection whose client stopped reading (write timed out)")
            raise StopIteration from None  # gunicorn's connection loop closes the connection
        finally:  # also when gunicorn ends the connection (StopIteration), as on its last request
            self._busy.discard(current)
            # Marked idle before reading `alive`: a stop signal between the two lines finds the
            # connection idle and closes it; one before them is seen here.
            if not self.alive:  # stopping, or recycled by max_requests (gunicorn cleared `alive`)
                self._stop_idling()  # a recycled worker is replaced only once it has exited
        if not self.alive:
            raise StopIteration  # gunicorn's connection loop closes this connection
        return keep_open

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: stop accepting (gunicorn), tell running streams the deadline, drop idle connections."""
        self._stop()

    def notify(self) -> None:
        """The heartbeat to the master (every second); if the master is gone, stop as on SIGTERM.

        gunicorn's gevent worker exits right there (sys.exit in `notify`), cutting every stream:
        its base class's `notify` is called instead, and the stop waits for running requests."""
        super(GeventWorker, self).notify()
        if self.alive and self.ppid != os.getppid():
            self.log.warning("gunicorn master %s is gone: stopping gracefully, as on SIGTERM", self.ppid)
            self._stop()

    def _stop(self) -> None:
        self.alive = False
        begin_shutdown(self.cfg.graceful_timeout, time.time())
        self._stop_idling()

    def run(self) -> None:
        """Serve (gunicorn), with a liveness record kept from before the first request to the exit."""
        self._keeper = self._keep_alive()
        try:
            super().run()
        finally:
            self._retire()

    def _stop_idling(self) -> None:
        """Close the idle connections now, and those accepted until gunicorn closes the listener
        (up to a second later) once they have sent nothing for SWEEP seconds."""
        if self._sweeper is None:
            self._drop(self._idle())
            self._sweeper = gevent.spawn(self._sweep)

    def _sweep(self) -> None:
        seen: set[Any] = set()
        while True:
            gevent.sleep(SWEEP)
            idle = self._idle()
            self._drop(idle & seen)
            seen = idle

    def _idle(self) -> set[Any]:
        return set(self._connections) - self._busy

    def _drop(self, greenlets: set[Any]) -> None:
        for current in greenlets:
            client = self._connections.get(current)
            if client is not None:
                _close_idle(client)

    def _keep_alive(self) -> Scheduler | None:
        """Beat once now (a slot is never held without a record), then beat and sweep in turn, on a
        scheduler of their own: a slow usage flush must not make this worker look dead."""
        from app.scheduler import Scheduler
        from app.storage.db import StorageError
        from app.storage.limits import worker_name
        from app.storage.liveness import BEAT, SWEEP_EVERY, Keeper, liveness_for

        gateway = self._gateway()
        if gateway is None:
            return None
        keeper = Keeper(liveness_for(gateway.limiter), worker_name())
        try:
            keeper.beat()
        except StorageError as exc:  # the scheduler beats again in a second
            self.log.error("could not record this worker as alive: %s", exc)
        chores = Scheduler()
        chores.every(BEAT, keeper.beat, "liveness_beat", final=False)
        chores.every(SWEEP_EVERY, lambda: self._free_dead(keeper), "liveness_sweep", final=False)
        chores.start()
        return chores

    def _free_dead(self, keeper: Any) -> None:
        from app.storage.liveness import STALE

        for worker, freed in keeper.sweep().items():
            if freed:
                self.log.warning("freed %d in-flight slot(s) of worker %s (silent for over %g s)", freed, worker, STALE)

    def _retire(self) -> None:
        """No request of this worker runs any more: free any slot it still holds (a release that
        failed, a stream cut at the end of the grace period) and drop its liveness record. The
        master's reaper does the first too, but after a crash of the master nobody else would."""
        from app.storage.db import StorageError
        from app.storage.limits import worker_name
        from app.storage.liveness import liveness_for

        gateway = self._gateway()
        if self._keeper is None or gateway is None:
            return
        self._keeper.close()
        name, liveness = worker_name(), liveness_for(gateway.limiter)
        try:
            freed = gateway.limiter.free_worker(name)
            liveness.forget(name)
        except StorageError as exc:  # others free them once the record is STALE
            self.log.error("could not free this worker's slots at exit: %s", exc)
            return
        finally:
            liveness.close()
        if freed:
            self.log.info("freed %d in-flight slot(s) of this worker at exit", freed)

    def _gateway(self) -> Any:
        return getattr(getattr(self, "wsgi", None), "extensions", {}).get("sluice")

    def handle_quit(self, sig: int, frame: Any) -> None:
        """SIGINT/SIGQUIT: quick exit, once. Ctrl-C signals the worker and then the master signals it
        again; a second `sys.exit` in a greenlet during interpreter shutdown printed a traceback."""
        if self._quitting:
            return
        self._quitting = True
        super().handle_quit(sig, frame)


def _close_idle(client: socket.socket) -> None:
    """Wake the greenlet waiting for the connection's next request: it reads the end and closes.

    Shut down through a duplicate descriptor (same connection): gevent's own `shutdown` would
    cancel the waiting read with EBADF, which gunicorn logs as a socket error with a traceback.
    """
    try:
        with socket.socket(fileno=os.dup(client.fileno())) as duplicate:
            duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # the client closed it already
