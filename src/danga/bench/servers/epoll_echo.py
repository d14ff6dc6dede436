"""A minimal hand-written ``select.epoll`` echo loop: the pure-Python limit.

No framework: one dict lookup, one recv, one send per event. A partial send is kept
and flushed on EPOLLOUT (so 64 KiB messages are echoed correctly), nothing more.
Prints ``PORT <n>`` once listening on 127.0.0.1, then serves until killed.
"""

import argparse
import select
import socket

EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", args.port))
    lsock.listen(4096)
    lsock.setblocking(False)
    lfd = lsock.fileno()
    ep = select.epoll()
    ep.register(lfd, EPOLLIN)
    conns: dict[int, socket.socket] = {}
    pending: dict[int, memoryview] = {}
    print(f"PORT {lsock.getsockname()[1]}", flush=True)
    poll = ep.poll
    while True:
        for fd, ev in poll(-1, len(conns) + 1):
            if fd == lfd:
                while True:
                    try:
                        c, _ = lsock.accept()
                    except BlockingIOError:
                        break
                    c.setblocking(False)
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conns[c.fileno()] = c
                    ep.register(c.fileno(), EPOLLIN)
                continue
            s = conns[fd]
            if ev & EPOLLOUT:
                rest = pending[fd]
                try:
                    n = s.send(rest)
                except BlockingIOError:
                    continue
                if n < len(rest):
                    pending[fd] = rest[n:]
                    continue
                del pending[fd]
                ep.modify(fd, EPOLLIN)
                continue
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                ep.unregister(fd)
                del conns[fd]
                pending.pop(fd, None)
                s.close()
                continue
            try:
                n = s.send(data)
            except BlockingIOError:
                n = 0
            if n < len(data):
                pending[fd] = memoryview(data)[n:]
                ep.modify(fd, EPOLLOUT)  # stop reading until the echo is out


if __name__ == "__main__":
    main()
