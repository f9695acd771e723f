"""A running service's state, loaded once at start-up: the models, the live index, the image sources, the
workers and micro-batchers, the metrics; and the operations the routes call (all async, model work on the
workers' threads, never on the event loop)."""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from polymodal.data.catalog import load_data_spec
from polymodal.index import SearchHit, VectorIndex
from polymodal.model_io import LoadedModel, weights_sha256
from polymodal.serve.batching import MicroBatcher, ModelWorker
from polymodal.serve.errors import ServiceError
from polymodal.serve.images import ImageSource
from polymodal.serve.live_index import LiveIndex, UploadStore
from polymodal.serve.metrics import Metrics
from polymodal.serve.models import (
    Answers,
    answer_batch,
    caption_images,
    embed_images,
    embed_texts,
    load_task_model,
)
from polymodal.serve.settings import ServeSettings
from polymodal.tasks.zero_shot import class_probabilities, zero_shot_classifier

__all__ = ["Service", "Upload"]

# Zero-shot class embeddings kept per (labels, templates): a page asks the same labels of many images.
_CLASSIFIER_CACHE = 64


@dataclass(frozen=True)
class Upload:
    """A checked, decoded upload: its pixels, the hash of its bytes and the client's file name (display only)."""

    image: Image.Image
    digest: str
    file_name: str | None


class Service:
    """Loads everything ``settings`` names (refusing, with a one-line ``ValueError``, a model of the wrong kind or
    an index built by other weights) and answers the routes' calls."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.search_model, self.index = self._load_search(settings)
        self.vqa_model = (load_task_model(settings.vqa_checkpoint, "vqa", "--vqa-checkpoint", settings.device)
                          if settings.vqa_checkpoint else None)
        self.caption_model = (load_task_model(settings.caption_checkpoint, "captioning", "--caption-checkpoint",
                                              settings.device) if settings.caption_checkpoint else None)
        self.uploads = UploadStore(settings.uploads_dir)
        self.images = ImageSource([load_data_spec(spec) for spec in settings.image_sets], self.uploads)
        # Content hash -> key of every image added through the service, to refuse the same image twice.
        self._uploaded = {self.uploads.digest_of(key): key for key in self.index.index.keys
                          if self.uploads.digest_of(key) is not None}
        self._classifiers: OrderedDict[tuple[tuple[str, ...], str], torch.Tensor] = OrderedDict()
        self._workers = {name: ModelWorker(name) for name in ("search", "vqa", "caption", "index")}
        batching = {"metrics": self.metrics, "max_batch": settings.batch_size, "max_wait_ms": settings.batch_wait_ms,
                    "max_queue": settings.max_queue}
        search = self._workers["search"]
        self._texts = MicroBatcher("search_text", self._search_texts, search, **batching)
        self._images = MicroBatcher("embed_image", lambda images: embed_images(self.search_model, images), search,
                                    **batching)
        self._answers = MicroBatcher("vqa", lambda items: answer_batch(self.vqa_model, items), self._workers["vqa"],
                                     **batching)
        self._captions = MicroBatcher("caption", lambda images: caption_images(self.caption_model, images),
                                      self._workers["caption"], **batching)
        self._batchers = (self._texts, self._images, self._answers, self._captions)
        self.metrics.gauge("polymodal_index_size", "Vectors in the live index.", lambda: len(self.index))
        self._warm_up()

    @staticmethod
    def _load_search(settings: ServeSettings) -> tuple[LoadedModel, LiveIndex]:
        saved = VectorIndex.load(settings.index) if settings.index.exists() else None
        checkpoint = settings.checkpoint or (saved.checkpoint if saved is not None else None)
        if checkpoint is None:
            what = "records no checkpoint" if saved is not None else "does not exist yet"
            raise ValueError(f"--index {settings.index} {what}; pass --checkpoint (the dual encoder that embeds "
                             "queries)")
        model = load_task_model(checkpoint, "contrastive", "--checkpoint", settings.device)
        if settings.onnx is not None:
            model = _onnx_query_encoder(settings.onnx, model)
        dim = int(embed_texts(model, ["a probe of the embedding size"]).shape[1])
        if saved is None:
            return model, LiveIndex.empty(settings.index, dim, str(model.directory.resolve()))
        if saved.dim != dim:
            raise ValueError(f"--index {settings.index} holds {saved.dim}-d vectors but {model.directory} embeds into "
                             f"{dim} dimensions: it is not the model that built the index")
        weights = saved.metadata.get("weights_sha256")
        if weights and weights != weights_sha256(model.directory):
            raise ValueError(f"--index {settings.index} was built from other weights than {model.directory}'s: "
                             "queries would land in another space")
        return model, LiveIndex(settings.index, saved)

    def _warm_up(self) -> None:
        """One call through every model before the first client: checks they run, and takes the first-call costs
        (allocations, lazy initialisation) out of the first request's latency."""
        probe = Image.new("RGB", (64, 64), "white")
        embed_images(self.search_model, [probe])
        if self.vqa_model is not None:
            answer_batch(self.vqa_model, [(probe, "what is this?", 1)])
        if self.caption_model is not None:
            caption_images(self.caption_model, [probe])

    @property
    def tasks(self) -> dict[str, bool]:
        """Which endpoints can answer (the page greys out the others)."""
        return {"search": True, "zero_shot": True, "vqa": self.vqa_model is not None,
                "caption": self.caption_model is not None}

    async def start(self) -> None:
        for batcher in self._batchers:
            batcher.start()

    async def stop(self) -> None:
        await asyncio.gather(*(batcher.stop() for batcher in self._batchers))
        for worker in self._workers.values():
            worker.close()

    # --- the operations behind the routes ---------------------------------------------------------------------

    async def search_text(self, text: str, k: int) -> list[SearchHit]:
        return await self._texts.submit((text, k))

    def _search_texts(self, queries: Sequence[tuple[str, int]]) -> list[list[SearchHit]]:
        """One batch of text searches: one forward pass, one index search (on the search worker)."""
        vectors = embed_texts(self.search_model, [text for text, _ in queries])
        hits = self.index.search(vectors, max(k for _, k in queries))
        return [row[:k] for row, (_, k) in zip(hits, queries)]

    async def search_image(self, image: Image.Image, k: int) -> list[SearchHit]:
        vector = await self._images.submit(image)
        index = self.index
        return (await self._workers["search"].run(lambda: index.search(vector[None], k)))[0]

    async def answer(self, image: Image.Image, question: str, k: int) -> Answers:
        self.require_task("vqa")
        return await self._answers.submit((image, question, k))

    async def caption(self, image: Image.Image) -> str:
        self.require_task("caption")
        return await self._captions.submit(image)

    async def zero_shot(self, image: Image.Image, labels: Sequence[str], templates: str, k: int) -> Answers:
        classifier = await self._classifier(tuple(labels), templates)
        vector = await self._images.submit(image)
        probabilities = class_probabilities(self.search_model.model, torch.from_numpy(vector[None]) @ classifier.T)[0]
        best = probabilities.topk(min(k, len(labels)))
        return [(labels[i], float(p)) for p, i in zip(best.values.tolist(), best.indices.tolist())]

    async def _classifier(self, labels: tuple[str, ...], templates: str) -> torch.Tensor:
        key = (labels, templates)
        if key not in self._classifiers:
            model = self.search_model
            self._classifiers[key] = (await self._workers["search"].run(
                lambda: zero_shot_classifier(model.model, model.tokenizer, labels, templates))).float().cpu()
            while len(self._classifiers) > _CLASSIFIER_CACHE:
                self._classifiers.popitem(last=False)
        return self._classifiers[key]

    async def add(self, uploads: Sequence[Upload]) -> list[str]:
        """Embed and add ``uploads`` to the index, saved before this returns; their keys, in order. An image
        already in the index (by content) is refused with 409, whatever its file name."""
        digests = [upload.digest for upload in uploads]
        if len(set(digests)) != len(digests):
            raise ServiceError(409, "duplicate_upload", "the same image is uploaded twice in this request")
        vectors = np.stack(await asyncio.gather(*(self._images.submit(upload.image) for upload in uploads)))
        keys = [self.uploads.key_for(upload.digest, upload.file_name) for upload in uploads]

        def save() -> None:
            # On the index worker, one add at a time: the check and the save cannot interleave with another add.
            for digest in digests:
                if digest in self._uploaded:
                    raise ServiceError(409, "already_indexed",
                                       f"this image is already in the index as {self._uploaded[digest]!r}")
            for upload in uploads:
                self.uploads.put(upload.digest, upload.image)  # the images first: the saved index names them
            self.index.add(vectors, keys)
            self._uploaded.update(zip(digests, keys))

        await self._workers["index"].run(save)
        return keys

    async def image_of(self, key: str) -> Image.Image:
        """The image of an indexed ``key`` (404 for any other key: clients never name files)."""
        return await self._from_source(self.images.open, key)

    async def thumbnail(self, key: str) -> bytes:
        """A JPEG of an indexed ``key``'s image (404 for any other key)."""
        return await self._from_source(self.images.thumbnail, key)

    async def _from_source(self, read, key: str):
        if key not in self.index:
            raise ServiceError(404, "unknown_key", "no such key in the index")
        try:
            return await asyncio.to_thread(read, key)  # file reads and decoding stay off the event loop
        except LookupError as error:
            raise ServiceError(404, "no_image", str(error)) from None

    def require_task(self, task: str) -> None:
        """Refuse (503 ``not_configured``) a task whose model this server was not started with."""
        if not self.tasks[task]:
            option = {"vqa": "--vqa-checkpoint", "caption": "--caption-checkpoint"}[task]
            raise ServiceError(503, "not_configured", f"this server has no {task} model; start it with {option} DIR")


# Largest difference from the PyTorch model's query embeddings an ONNX export may show (measured: 2e-7).
_ONNX_TOLERANCE = 1e-4


def _onnx_query_encoder(directory: Path, loaded: LoadedModel) -> LoadedModel:
    """``loaded`` with its model replaced by the onnxruntime graphs in ``directory``, after checking they are an
    export of that model: the same config, and the same embeddings of a probe text and image."""
    from polymodal.interop.onnx_export import OnnxDualEncoder  # the export extra: polymodal[export]

    onnx = OnnxDualEncoder(directory, threads=torch.get_num_threads())
    if onnx.manifest.get("model_config") != loaded.model.config:
        raise ValueError(f"--onnx {directory} is not an export of {loaded.directory}: their model configs differ "
                         f"(export it with `polymodal convert {loaded.directory} --to onnx --out {directory}`)")
    texts = ["a probe of the export", "a red heart"]
    image = Image.new("RGB", (64, 48), "orange")
    with_onnx = replace(loaded, model=onnx, tokenizer=onnx.tokenizer, transform=onnx.transform)
    for name, embed, probe in (("texts", embed_texts, texts), ("images", embed_images, [image])):
        difference = float(np.abs(embed(with_onnx, probe) - embed(loaded, probe)).max())
        if difference > _ONNX_TOLERANCE:
            raise ValueError(f"--onnx {directory}: its {name} embeddings differ from {loaded.directory}'s by "
                             f"{difference:.2g} (more than {_ONNX_TOLERANCE:g}): export the checkpoint again")
    return with_onnx
