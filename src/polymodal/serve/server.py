"""Running the app: uvicorn on one host and port, in this process."""
from __future__ import annotations

import os

import torch

from polymodal.serve.app import create_app
from polymodal.serve.settings import ServeSettings

__all__ = ["default_threads", "run_server"]


def default_threads() -> int:
    """Threads for the models' arithmetic: half the cores, so the other half parses requests and answers them.
    On 2 shared cores one inference thread kept text-search latency 2-3x lower than two
    (``benchmarks/serve_load.py --server-threads``), since two spin against each other and the HTTP side."""
    return max(1, (os.cpu_count() or 2) // 2)


def run_server(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, access_log: bool = False,
               threads: int | None = None) -> None:
    """Load everything ``settings`` names, then serve it until interrupted (Ctrl-C, SIGTERM).

    ``access_log``: uvicorn's line per request (off by default: ``/metrics`` counts requests, and a line per
    request costs throughput under load). ``threads``: PyTorch's intra-op threads (default :func:`default_threads`).
    """
    import uvicorn  # the serving extra: polymodal[serve]

    torch.set_num_threads(threads or default_threads())
    app = create_app(settings)
    uvicorn.run(app, host=host, port=port, access_log=access_log, log_level="info")
