"""Does CLIP's 80-template prompt ensemble help the offline ConSE bridge out of domain?

The quickstart's pretrained model (``lit-effnet-minilm``) starts as a training-free bridge: EfficientNet-Lite0's
ImageNet probabilities weight the MiniLM embeddings of the 1,000 ImageNet class names. Those class names are
embedded under a prompt ensemble; this script scores the untrained bridge on the quickstart's evaluation sets
with each ensemble (``--bridge-templates``) and, for the zero-shot columns, each set of class prompts
(``--zero-shot-templates``; ``recipe`` = the quickstart's own four). Everything is measured in this one run.

    python benchmarks/bridge_templates.py [--bridge-templates bridge imagenet] \\
        [--zero-shot-templates recipe imagenet] [--threads N] [--out docs]

With ``--out`` the table goes to ``OUT/bridge_templates.md`` (+ ``.json``) with the command that made it.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from report_setup import processor_name, start_report

from polymodal.cli.report import print_table
from polymodal.data.catalog import load_data_spec, split_train_val
from polymodal.encoders.build import build_tokenizer
from polymodal.factory import get_model_config
from polymodal.models.registry import build_model
from polymodal.recipes.quickstart import TABLE_METRICS, evaluate_model, real_recipe
from polymodal.tasks.prompt_templates import TEMPLATE_SETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bridge-templates", nargs="+", default=["bridge", "imagenet"], choices=sorted(TEMPLATE_SETS))
    parser.add_argument("--zero-shot-templates", nargs="+", default=["recipe", "imagenet"],
                        choices=["recipe", *sorted(TEMPLATE_SETS)])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    out, command = start_report(args, __file__)

    recipe = real_recipe(str(out / "unused"))
    train_all = load_data_spec(recipe.run.data.train)
    _, held_out = split_train_val(train_all, recipe.run.data.val_fraction, recipe.run.train.seed)
    retrieval_sets = {label: held_out if spec == "held-out" else load_data_spec(spec)
                      for label, spec in recipe.retrieval_sets.items()}
    zero_shot_sets = {label: load_data_spec(spec) for label, spec in recipe.zero_shot_sets.items()}

    results: dict[str, dict[str, dict[str, float]]] = {}
    for bridge_templates in args.bridge_templates:
        config = copy.deepcopy(get_model_config(recipe.run.model))
        config["bridge"]["templates"] = bridge_templates
        started = time.perf_counter()
        model = build_model(config, f"{recipe.run.model} with bridge.templates={bridge_templates}")
        print(f"bridge templates {bridge_templates!r}: {len(TEMPLATE_SETS[bridge_templates])} x 1000 class "
              f"prompts embedded (or read from the cache) in {time.perf_counter() - started:.0f} s")
        tokenizer = build_tokenizer(config["text"], lambda: iter(()), "bridge_templates")
        for zero_shot_templates in args.zero_shot_templates:
            templates = recipe.templates if zero_shot_templates == "recipe" else TEMPLATE_SETS[zero_shot_templates]
            scores, _ = evaluate_model(model, tokenizer, retrieval_sets, zero_shot_sets, templates, progress=False)
            results[f"bridge: {bridge_templates} / zero-shot: {zero_shot_templates}"] = scores

    rows = []
    for label in [*retrieval_sets, *[z for z in zero_shot_sets if z not in retrieval_sets]]:
        for metric, shown in TABLE_METRICS.items():
            cells = {column: scores[label][metric] for column, scores in results.items() if metric in scores[label]}
            if cells:
                rows.append({"dataset": label, "metric": shown, **{c: round(v, 1) for c, v in cells.items()}})
    title = f"untrained ConSE bridge ({recipe.run.model}), % — {processor_name()}, {torch.get_num_threads()} threads"
    print_table(title, rows)
    header = list(rows[0])
    lines = [f"# {title}", "", f"`{command}`", "", "| " + " | ".join(header) + " |",
             "| " + " | ".join("---" for _ in header) + " |",
             *("| " + " | ".join(str(row.get(h, "")) for h in header) + " |" for row in rows)]
    (out / "bridge_templates.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "bridge_templates.json").write_text(json.dumps({"command": command, "results": results}, indent=2))


if __name__ == "__main__":
    main()
