"""Shared by the multi-process tests (imported as ``tests.distributed_helpers``; not a test module)."""
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for MASTER_PORT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
