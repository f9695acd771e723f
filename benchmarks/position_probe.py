"""Is "left of" in the image tokens, and which read-out learns it? A probe on the shapes world's frozen
EfficientNet-Lite0 token grid, with the text side taken out of the problem.

Every VQA fusion family stays near 50% on the shapes world's yes/no position questions ("is the circle left of
the square?"), whatever it learns about colour and shape. This probe asks the same question with the two objects
given by their true (colour, shape): each object's embedding queries the 7x7 token grid (one attention read-out
per object, as a fusion's word tokens query the image), and a small MLP answers "is A left of B?" from the two
read-outs, trained with binary cross-entropy on horizontal pairs of the first ``--scenes`` training scenes
(85% train, 15% held out). Positions reach the tokens as in ``fusion.image_positions: sincos`` (MAE's 2-D table
times a per-channel scale starting at 0 or at 1), or not at all. Two read-outs are compared:

- ``ordered``: ``MLP([r_A; r_B])``: A's and B's read-outs in fixed slots, so ``x_A - x_B`` is linear in the input;
- ``pooled``: ``MLP(Σ_o f(r_o + role_o))``: each read-out tagged with a learned role embedding, transformed, then
  summed, the shape of a fusion that mean-pools its query tokens after cross-attention.

    python benchmarks/position_probe.py [--scenes 2000] [--epochs 16] [--seed 0] [--threads 1]
"""
from __future__ import annotations

import argparse
import math
import random
import time

import torch
import torch.nn.functional as F
from torch import nn

from polymodal.data.shapes import COLOURS, SHAPES, ShapesWorld
from polymodal.data.transforms import image_transform
from polymodal.encoders.build import build_encoder
from polymodal.layers.pos_embed import sincos_2d_pos_embed

WIDTH = 128


def scene_tokens(count: int) -> tuple[list, torch.Tensor]:
    """The first ``count`` training scenes and their frozen EfficientNet-Lite0 tokens ``(count, 49, 1280)``."""
    built = build_encoder("image", {"type": "efficientnet_lite0", "frozen": True})
    encoder, transform, world = built.encoder.eval(), image_transform(built.preprocess), ShapesWorld()
    scenes = [world.scene("train", index) for index in range(count)]
    tokens = []
    with torch.no_grad():
        for start in range(0, count, 50):
            tokens.append(encoder(torch.stack([transform(world.render(s)) for s in scenes[start:start + 50]])).tokens)
    return scenes, torch.cat(tokens)


def horizontal_pairs(scenes: list) -> torch.Tensor:
    """Rows ``(scene, colour_A, shape_A, colour_B, shape_B, A left of B)`` for pairs separated mostly along x."""
    colour_index, shape_index = {c: i for i, c in enumerate(COLOURS)}, {s: i for i, s in enumerate(SHAPES)}
    rng, rows = random.Random(0), []
    for number, scene in enumerate(scenes):
        if len(scene.objects) < 2:
            continue
        for _ in range(3):
            a, b = rng.sample(scene.objects, 2)
            if abs(b.x - a.x) >= abs(b.y - a.y):
                rows.append((number, colour_index[a.colour], shape_index[a.shape], colour_index[b.colour],
                             shape_index[b.shape], float(b.x > a.x)))
    return torch.tensor(rows)


class Probe(nn.Module):
    """Per-object attention read-outs of the token grid, then an ``ordered`` or ``pooled`` answer."""

    def __init__(self, channels: int, readout: str, scale: float | None) -> None:
        super().__init__()
        self.readout = readout
        self.scale = None if scale is None else nn.Parameter(torch.full((channels,), scale))
        self.register_buffer("table", sincos_2d_pos_embed(channels, (7, 7)), persistent=False)
        self.proj = nn.Linear(channels, WIDTH)
        self.colour, self.shape = nn.Embedding(len(COLOURS), WIDTH), nn.Embedding(len(SHAPES), WIDTH)
        self.key, self.value = nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, WIDTH)
        self.role = nn.Embedding(2, WIDTH)
        self.each = nn.Sequential(nn.Linear(WIDTH, 256), nn.GELU(), nn.Linear(256, WIDTH))
        self.answer = nn.Sequential(nn.Linear(2 * WIDTH if readout == "ordered" else WIDTH, 256), nn.GELU(),
                                    nn.Linear(256, 1))

    def read(self, grid: torch.Tensor, colour: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        query = self.colour(colour) + self.shape(shape)  # (B, W)
        weights = torch.einsum("bw,bnw->bn", query, self.key(grid)) / math.sqrt(WIDTH)
        return torch.einsum("bn,bnw->bw", weights.softmax(-1), self.value(grid))

    def forward(self, tokens: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            tokens = tokens + self.scale * self.table
        grid = self.proj(tokens)
        first, second = (self.read(grid, pairs[:, i].long(), pairs[:, i + 1].long()) for i in (1, 3))
        if self.readout == "ordered":
            return self.answer(torch.cat([first, second], -1)).squeeze(-1)
        pooled = self.each(first + self.role.weight[0]) + self.each(second + self.role.weight[1])
        return self.answer(pooled).squeeze(-1)


def held_out_accuracy(tokens: torch.Tensor, pairs: torch.Tensor, readout: str, scale: float | None,
                      epochs: int, seed: int) -> float:
    torch.manual_seed(seed)
    split = int(0.85 * len(pairs))
    probe = Probe(tokens.shape[-1], readout, scale)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=2e-3, weight_decay=0.05)
    for _ in range(epochs):
        for batch in pairs[:split][torch.randperm(split)].split(64):
            loss = F.binary_cross_entropy_with_logits(probe(tokens[batch[:, 0].long()], batch), batch[:, 5])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    held_out = pairs[split:]
    with torch.no_grad():
        predicted = probe(tokens[held_out[:, 0].long()], held_out) > 0
    return 100 * (predicted.float() == held_out[:, 5]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="initialisation and batch order")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    scenes, tokens = scene_tokens(args.scenes)
    pairs = horizontal_pairs(scenes)
    print(f"{len(pairs)} horizontal pairs from {args.scenes} scenes ({time.perf_counter() - start:.0f} s to embed); "
          f"{args.epochs} epochs, seed {args.seed}; held-out accuracy (chance 50%):", flush=True)
    print("| read-out | no positions | sincos, scale from 0 | sincos, scale from 1 |\n| --- | ---: | ---: | ---: |")
    for readout in ("ordered", "pooled"):
        cells = [f"{held_out_accuracy(tokens, pairs, readout, scale, args.epochs, args.seed):.1f}" for scale in (None, 0.0, 1.0)]
        print(f"| {readout} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
