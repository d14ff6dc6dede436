"""Echo server on danga (``--backend epoll|poll|select|kqueue``), written as a user would.

``--idle-timeout S`` gives every connection an idle timeout of S seconds (the
``danga-epoll-idle`` server of ``danga bench``: the cost of idle timeouts, against
``danga-epoll``).

Prints ``PORT <n>`` once listening on 127.0.0.1, then serves until killed.
"""

import argparse
import socket
import sys

import danga


class Echo(danga.Socket):
    __slots__ = ()

    def __init__(self, sock: socket.socket, *, loop: danga.Loop) -> None:
        super().__init__(sock, loop=loop)
        self.watch_read(True)

    def event_read(self) -> None:
        data = self.read(65536)
        if data is None:
            self.close("eof")
        elif data:
            self.write(data)


def accept(conn: socket.socket, *, loop: danga.Loop) -> Echo:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio and uvloop do
    return Echo(conn, loop=loop)


class IdleEcho(Echo):
    __slots__ = ()


def accept_idle(conn: socket.socket, *, loop: danga.Loop) -> Echo:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return IdleEcho(conn, loop=loop)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backend", default=None)
    parser.add_argument("--idle-timeout", type=float, default=None)
    args = parser.parse_args()
    IdleEcho.max_idle_time = args.idle_timeout
    loop = danga.Loop(args.backend)
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", args.port))
    lsock.listen(4096)
    danga.Listener(lsock, loop=loop, factory=accept_idle if args.idle_timeout else accept)
    print(f"PORT {lsock.getsockname()[1]} backend={loop.backend.name}", flush=True)
    sys.stdout.flush()
    loop.run()


if __name__ == "__main__":
    main()
