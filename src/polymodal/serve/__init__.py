"""``polymodal serve``: search, VQA, captions and zero-shot labels over HTTP, with a web page.

``settings.py`` (what is served, the limits), ``service.py`` (models and index loaded once; the operations),
``models.py`` (batched model calls), ``batching.py`` (micro-batcher, model threads), ``live_index.py`` (adding
to the index while serving, atomically), ``images.py`` (key → image, thumbnails), ``uploads.py`` (upload checks),
``auth.py`` (the write key), ``metrics.py`` (Prometheus text), ``errors.py`` (JSON errors), ``app.py`` (routes),
``server.py`` (uvicorn), ``static/`` (the page).
"""
from polymodal.serve.app import create_app
from polymodal.serve.server import run_server
from polymodal.serve.settings import ServeSettings, quickstart_settings
from polymodal.serve.uploads import UploadLimits

__all__ = ["ServeSettings", "UploadLimits", "create_app", "quickstart_settings", "run_server"]
