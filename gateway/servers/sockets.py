"""The kernel's view of a worker's listening socket and connections: what the drain (gateway/servers/drain.py) needs
and neither server offers. Linux only, like the gateway.

Retiring a listening socket without losing a connection: closing it resets every connection the kernel completed
but the server has not accepted yet (the client already sent its request), and a handshake can complete at any
instant before the close. So `stop_syns` first attaches a socket filter that drops new connection attempts (a SYN
without ACK; the client retransmits it after ~1 s and by then the socket is closed: refused) while handshakes
already under way still complete; the server keeps accepting until those have completed and the accept queue is
empty (`Retirement`), and only then is the socket closed. Nothing the kernel accepted is reset.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import termios
import time
from dataclasses import dataclass

SO_ATTACH_FILTER = 26
SIOCOUTQ = termios.TIOCOUTQ  # bytes sent but not yet acknowledged by the peer, or not sent at all
# Classic BPF over the TCP header (a socket filter sees the packet from its transport header): drop a packet whose
# flags have SYN without ACK (a new connection attempt), keep everything else whole.
_DROP_NEW_CONNECTIONS = [
    (0x30, 0, 0, 13),  # ldb [13]          TCP flags
    (0x54, 0, 0, 0x12),  # and #SYN|ACK
    (0x15, 1, 0, 0x02),  # jeq #SYN -> drop
    (0x06, 0, 0, 0xFFFFFFFF),  # ret #-1  keep the whole packet
    (0x06, 0, 0, 0),  # drop: ret #0
]
_TCP_INFO_SIZE = 136


def stop_syns(sock: socket.socket) -> None:
    """New connection attempts to this listening socket are dropped from now on (and inherited by nothing: an
    accepted connection is never affected)."""
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in _DROP_NEW_CONNECTIONS))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", len(_DROP_NEW_CONNECTIONS),
                                                                     ctypes.addressof(code)))


def accept_queue(sock: socket.socket) -> int:
    """Connections the kernel completed on this listening socket that are not accepted yet (tcpi_unacked)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    return int(struct.unpack_from("I", info, 24)[0])


class Retirement:
    """A listening socket being retired: new connection attempts are dropped from the start; `ready()` (asked
    every tick, while the server keeps accepting) says when it can close: SETTLE_S has passed, so the handshakes
    that were under way (one round trip) have completed, and the accept queue is empty."""

    SETTLE_S = 0.5  # below the client's first SYN retransmission (1 s): a dropped SYN's retry finds it closed

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.started = time.monotonic()
        stop_syns(sock)

    def ready(self) -> bool:
        return time.monotonic() - self.started >= self.SETTLE_S and accept_queue(self.sock) == 0


def unread(sock: socket.socket | int) -> int:
    """Bytes received on a connection that the server has not read yet."""
    fd = sock if isinstance(sock, int) else sock.fileno()
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


def unsent(fd: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, SIOCOUTQ, b"\0\0\0\0"))[0])


@dataclass(slots=True)
class Conn:
    """One established connection of this process, seen from the kernel."""

    fd: int
    peer: str  # "ip:port" ("[ip]:port" for IPv6), as Granian's scope.client spells it
    unread: int  # bytes the server has not read yet
    unsent: int  # response bytes not yet acknowledged by the client
    received: int  # bytes received since the connection opened (0: the client has sent nothing yet)
    recv_ago_ms: int  # since the last data received
    sent_ago_ms: int  # since the last data sent (since the connection opened, if none was)

    def answered(self, quiet_ms: float) -> bool:
        """The client has sent something, and the last data it sent was followed by data sent to it (kernel times
        tick in milliseconds: the same tick is not "followed"), and the connection is quiet for `quiet_ms`. Data
        the server read but has not answered yet leaves no other trace on the socket."""
        return 0 < self.received and self.sent_ago_ms < self.recv_ago_ms and self.sent_ago_ms >= quiet_ms


def _peer(addr: tuple[str, int] | tuple[str, int, int, int]) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def _own_sockets(port: int) -> list[tuple[int, socket.socket]]:
    """(fd, a dup of it) for every TCP socket of this process whose local port is `port`; close the dups."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue  # closed meanwhile
        try:
            if sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6) \
                    and sock.getsockname()[1] == port:
                found.append((fd, sock))
                continue
        except OSError:
            pass
        sock.close()
    return found


def listeners(port: int) -> list[tuple[int, socket.socket]]:
    """(fd, a dup of it) for this process's listening sockets on `port`."""
    out = []
    for fd, sock in _own_sockets(port):
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            out.append((fd, sock))
        else:
            sock.close()
    return out


def connections(port: int) -> list[Conn]:
    """This process's established connections on local port `port`."""
    out = []
    for fd, sock in _own_sockets(port):
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                continue
            peer = _peer(sock.getpeername())
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
            sent_ago, recv_ago = struct.unpack_from("I4xI", info, 44)
            out.append(Conn(fd, peer, unread(sock), unsent(sock.fileno()), struct.unpack_from("Q", info, 128)[0],
                            recv_ago, sent_ago))
        except OSError:
            continue  # not connected (any more)
        finally:
            sock.close()
    return out


def close_connection(fd: int, peer: str) -> None:
    """Shut a connection down in both directions (the client sees the connection end; the server reads its end
    and closes its descriptor). Checked against `peer` first: the fd number may have been reused."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        if _peer(sock.getpeername()) == peer:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


def release(fd: int, dup: socket.socket) -> None:
    """Close the listening socket behind `fd`, which another runtime (Granian's tokio) polls, without touching
    that runtime: the fd number is pointed at a fresh listening socket on a port no one knows, so a pending accept
    on it waits until the runtime drops it (an accept on it answers "try again", never an error to loop on); the
    kernel's poller forgets the old socket once it is closed. `dup` is the caller's duplicate, closed too."""
    spare = socket.socket(dup.family, socket.SOCK_STREAM)
    spare.bind(("::1" if dup.family == socket.AF_INET6 else "127.0.0.1", 0))
    spare.listen(1)
    spare.setblocking(False)
    os.dup2(spare.fileno(), fd, inheritable=False)
    spare.close()
    dup.close()
