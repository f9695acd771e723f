"""``polymodal serve [--checkpoint C] [--index I] [--host 127.0.0.1 --port 8000]``."""
from __future__ import annotations

import argparse
import os

HELP = """\
Serve search, visual question answering, captions and zero-shot labels over HTTP, with a web page at
http://HOST:PORT/ (search box, image drop zone, result grid, VQA and caption panels) and the API documented at
/docs. Models and index load once at start-up; concurrent requests share model calls (micro-batching).

  polymodal serve                                  # the quickstart's model and index (runs it first if missing)
  polymodal serve --index runs/x/index             # an index from `polymodal index build` (its model)
  polymodal serve --index runs/x/index --vqa-checkpoint runs/vqa --caption-checkpoint runs/captions
  polymodal serve --checkpoint runs/x --index photos_index   # a new folder: an empty index, grown by /index/add
  polymodal convert runs/quickstart/model --to onnx --out runs/quickstart/onnx
  polymodal serve --onnx runs/quickstart/onnx      # onnxruntime embeds the queries: same vectors, ~3x faster
  POLYMODAL_API_KEY=secret polymodal serve --host 0.0.0.0     # writes need the key when it is set

From a shell:
  curl -F text="a red heart" localhost:8000/search
  curl -F image=@photo.jpg -F k=5 localhost:8000/search
  curl -F image=@photo.jpg -F question="what color is it?" localhost:8000/vqa
  curl -F image=@photo.jpg localhost:8000/caption
  curl -F image=@photo.jpg -F labels="cat, dog, car" localhost:8000/zero-shot
  curl -H "Authorization: Bearer secret" -F images=@a.png -F images=@b.png localhost:8000/index/add
  curl localhost:8000/healthz ; curl localhost:8000/metrics

Thumbnails come from the images of the indexed keys: uploaded ones, files (keys that are paths) and the data
sets named with --images (for the quickstart's index, its own). Uploads are limited in bytes and pixels and
must be real PNG, JPEG, GIF or WebP images. It binds to 127.0.0.1 unless --host says otherwise.
"""

DEFAULT_QUICKSTART = "runs/quickstart"
# Where the write key is read from when --api-key is not given (a flag's value shows in `ps`).
API_KEY_ENV = "POLYMODAL_API_KEY"


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("serve", help="HTTP API and web page: search, VQA, captions", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", help="index directory (default: the quickstart's, see --quickstart)")
    parser.add_argument("--checkpoint", help="dual encoder embedding the queries (default: the index's own)")
    parser.add_argument("--onnx", metavar="DIR",
                        help="ONNX export of the search model (`polymodal convert CKPT --to onnx --out DIR`): "
                             "onnxruntime embeds the queries, the same vectors in about a third of the time on CPU")
    parser.add_argument("--vqa-checkpoint", dest="vqa_checkpoint", help="VQA model for /vqa (default: none)")
    parser.add_argument("--caption-checkpoint", dest="caption_checkpoint", help="captioner for /caption")
    parser.add_argument("--images", action="append", default=[], metavar="DATA",
                        help="data set whose images the index holds (catalog name or path, as --data takes; "
                             "repeatable), for thumbnails")
    parser.add_argument("--uploads", help="where images added through /index/add are kept (default: INDEX-uploads)")
    parser.add_argument("--quickstart", default=DEFAULT_QUICKSTART,
                        help=f"quickstart output served when --index is not given (default: {DEFAULT_QUICKSTART})")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--api-key", dest="api_key", default=os.environ.get(API_KEY_ENV),
                        help=f"key required by write endpoints (default: ${API_KEY_ENV}; none: writes are open)")
    parser.add_argument("--max-upload-mb", dest="max_upload_mb", type=float, default=10.0,
                        help="largest image file accepted, in MiB (default 10)")
    parser.add_argument("--max-pixels", dest="max_pixels", type=int, default=40_000_000,
                        help="largest width x height accepted (default 40,000,000)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=32,
                        help="most requests one model call answers (default 32)")
    parser.add_argument("--batch-wait-ms", dest="batch_wait_ms", type=float, default=10.0,
                        help="at most how long a request waits for others to share its model call (default 10)")
    parser.add_argument("--threads", type=int, help="PyTorch threads for the models (default: half the cores)")
    parser.add_argument("--access-log", dest="access_log", action="store_true", help="log every request")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from polymodal.serve import (
        ServeSettings,
        UploadLimits,
        quickstart_settings,
        run_server,
    )

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    options = {"checkpoint": _path(args.checkpoint), "onnx": _path(args.onnx),
               "vqa_checkpoint": _path(args.vqa_checkpoint),
               "caption_checkpoint": _path(args.caption_checkpoint), "uploads": _path(args.uploads),
               "api_key": args.api_key or None, "device": args.device, "batch_size": args.batch_size,
               "batch_wait_ms": args.batch_wait_ms,
               "limits": UploadLimits(max_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels)}
    if args.index is not None:
        settings = ServeSettings(index=Path(args.index), image_sets=tuple(args.images), **options)
    elif args.checkpoint is not None:
        raise ValueError("--checkpoint needs --index DIR (a new folder starts an empty index)")
    else:
        settings = quickstart_settings(args.quickstart, say=lambda line: print(f"polymodal serve: {line}", flush=True),
                                       **options)
        if args.images:
            settings = replace(settings, image_sets=settings.image_sets + tuple(args.images))
    if args.host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        print(f"polymodal serve: warning: listening on {args.host} with no API key: anyone who can reach it may add "
              "images (/index/add); set POLYMODAL_API_KEY")
    print(f"polymodal serve: loading models and index ({settings.index}) ...", flush=True)
    run_server(settings, args.host, args.port, access_log=args.access_log, threads=args.threads)
    return 0


def _path(value: str | None):
    from pathlib import Path

    return Path(value) if value else None
