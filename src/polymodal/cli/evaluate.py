"""``polymodal eval CHECKPOINT [--data SPEC] [--zero-shot SPEC] [--json]``."""
from __future__ import annotations

import argparse

from polymodal.cli.caption import add_generation_arguments, generation_overrides

HELP = """\
Score a trained model: retrieval (and zero-shot) for a dual encoder, top-1/top-5 accuracy for a classifier,
the official VQA accuracy (overall, per question type and per answer type) for a VQA model, BLEU-1..4,
ROUGE-L and CIDEr-D for a captioner.

  polymodal eval runs/clip --data pairs.jsonl --zero-shot animal-shapes --json
  polymodal eval runs/captions --data annotations/captions_val2017.json --coco-results results.json
  polymodal eval runs/captions --data shapes --data-split test --method greedy --json

  --data SPEC       image-text pairs to score retrieval on: a JSONL of {"image": path, "caption": text}
                    (paths relative to the file), a CSV, COCO captions JSON, Karpathy JSON, an ImageFolder,
                    or a catalog name (polymodal data list). Default: the run's validation set.
                    For a VQA model: a VQA set, i.e. easy-vqa or shapes (with --data-split) or a folder
                    holding questions.json + annotations.json (VQA v2 format, e.g. from `polymodal data
                    export NAME --format vqa`).
                    For a captioner: images with reference captions in any of the formats above (COCO
                    captions JSON, e.g. from `polymodal data export NAME --format coco`).
  --questions REGEX, --skip-questions REGEX   (VQA) score only the questions the regular expression matches
                    (does not match), e.g. --questions "^is .* (left of|right of|above|below) " for the shapes
                    world's yes/no position questions.
  --zero-shot SPEC  a labelled set (ImageFolder or catalog name such as animal-shapes) for zero-shot
                    top-1/top-5 with prompt ensembling.
  --cluster SPEC    a labelled set: k-means (k = its number of classes) on the image embeddings, scored
                    against the labels with NMI and ARI.
  --coco-results FILE   (captioner) also write the generated captions as COCO results JSON,
                    [{"image_id", "caption"}], for the official COCO caption evaluation tools.
  --beam N, --method greedy|beam|sample, --max-length N   (captioner) decode otherwise than the model
                    config's `generate` section says (the presets: beam search, 3 beams).
Prints a table, or with --json one JSON object: image_to_text_R@1/5/10, text_to_image_R@1/5/10, median
ranks, zero_shot_top1/top5 and cluster_nmi/ari when asked; for VQA, vqa_accuracy and question_type/* and
answer_type/* accuracies (the official evaluator's rules); for a captioner, BLEU-1..BLEU-4, ROUGE-L and
CIDEr-D as pycocoevalcap computes them (fractions; CIDEr-D x10), PTB-tokenised captions, 4 decimals.
"""


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("eval", help="retrieval and zero-shot metrics of a checkpoint", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint directory or run directory")
    parser.add_argument("--data", help="pairs to evaluate retrieval on (see above)")
    parser.add_argument("--data-split", dest="data_split", help="split of a named --data set (e.g. test)")
    parser.add_argument("--questions", metavar="REGEX", help="VQA: score only the questions this matches")
    parser.add_argument("--skip-questions", dest="skip_questions", metavar="REGEX",
                        help="VQA: leave out the questions this matches")
    parser.add_argument("--zero-shot", dest="zero_shot", help="labelled set for zero-shot classification")
    parser.add_argument("--cluster", help="labelled set for k-means clustering of the image embeddings")
    parser.add_argument("--skip-bad", action="store_true", help="skip and count malformed rows")
    parser.add_argument("--coco-results", dest="coco_results", metavar="FILE",
                        help="captioner: write the captions as COCO results JSON")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=64,
                        help="captioner: images decoded together (default 64)")
    add_generation_arguments(parser, full=False)
    parser.add_argument("--json", action="store_true", help="print metrics as JSON")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from polymodal.cli.common import print_json, run_config_beside
    from polymodal.cli.report import print_table
    from polymodal.data.catalog import load_data_spec
    from polymodal.data.vqa import load_vqa_spec
    from polymodal.models.registry import family_of
    from polymodal.model_io import load_for_inference
    from polymodal.tasks.captioning import evaluate_captioning, write_coco_results
    from polymodal.tasks.classification import evaluate_labelled_set
    from polymodal.tasks.retrieval import evaluate_retrieval
    from polymodal.tasks.vqa import evaluate_vqa
    from polymodal.tasks.zero_shot import evaluate_zero_shot

    loaded = load_for_inference(args.checkpoint, args.device)
    spec = args.data
    if spec is None and args.zero_shot is None and args.cluster is None:
        run_config = run_config_beside(loaded.directory) or {}
        spec = (run_config.get("data") or {}).get("val")
        if spec is None:
            raise ValueError("no --data given and the run has no validation set; pass --data PAIRS.jsonl")
    metrics: dict[str, float | int | str] = {}
    progress = not args.json
    task = family_of(loaded.model.config).task
    if task != "contrastive" and (args.zero_shot is not None or args.cluster is not None):
        raise ValueError(f"--zero-shot and --cluster need a dual encoder; {loaded.directory} holds a {task} model")
    captioning = task == "captioning"
    caption_options = [flag for flag, value in (("--coco-results", args.coco_results), ("--beam", args.beam),
                                                ("--method", args.method), ("--max-length", args.max_length))
                       if value is not None]
    if caption_options and not captioning:
        verb = "needs" if len(caption_options) == 1 else "need"
        raise ValueError(f"{', '.join(caption_options)} {verb} a captioner; {loaded.directory} holds a {task} model")
    if spec is not None and args.data_split is not None:
        spec = {"name": spec, "split": args.data_split} if isinstance(spec, str) else {**spec, "split": args.data_split}
    filters = {key: value for key, value in (("questions", args.questions), ("skip_questions", args.skip_questions))
               if value is not None}
    if filters and task != "vqa":
        raise ValueError(f"--questions and --skip-questions filter VQA sets; {loaded.directory} holds a {task} model")
    if filters and spec is not None:
        spec = {"name": spec, **filters} if isinstance(spec, str) else {**spec, **filters}
    if spec is not None and task == "vqa":
        dataset = load_vqa_spec(spec, args.skip_bad)
        report = evaluate_vqa(loaded.model, dataset, loaded.tokenizer, loaded.transform)
        metrics.update({"dataset": dataset.name, "questions": report.count, "skipped": dataset.skipped,
                        "vqa_accuracy": round(report.overall, 2)})
        metrics.update({f"question_type/{k}": round(v, 2) for k, v in report.per_question_type.items()})
        metrics.update({f"answer_type/{k}": round(v, 2) for k, v in report.per_answer_type.items()})
    elif spec is not None and captioning:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
        generation = generation_overrides(args, loaded.model.generation.method)
        dataset = load_data_spec(spec, args.skip_bad)
        report = evaluate_captioning(loaded.model, dataset, loaded.tokenizer, loaded.transform, args.batch_size,
                                     **generation)
        metrics.update({"dataset": dataset.name, "images": len(dataset), "skipped": dataset.skipped})
        metrics.update({name: round(score, 4) for name, score in report.scores.items()})
        if args.coco_results is not None:
            write_coco_results(args.coco_results, report.captions)
    elif spec is not None:
        dataset = load_data_spec(spec, args.skip_bad)
        metrics.update({"dataset": dataset.name, "images": len(dataset), "skipped": dataset.skipped})
        if task == "classification":
            metrics.update(evaluate_labelled_set(loaded.model, loaded.tokenizer, dataset, loaded.transform))
        else:
            metrics.update(evaluate_retrieval(loaded.model, loaded.tokenizer, dataset, loaded.transform,
                                              progress=progress))
    if args.zero_shot is not None:
        labelled = load_data_spec(args.zero_shot, args.skip_bad)
        scores = evaluate_zero_shot(loaded.model, loaded.tokenizer, labelled, loaded.transform, progress=progress)
        metrics.update({f"zero_shot_{k}": v for k, v in scores.items()})
        metrics["zero_shot_dataset"] = labelled.name
    if args.cluster is not None:
        from polymodal.tasks.clustering import evaluate_clustering

        labelled = load_data_spec(args.cluster, args.skip_bad)
        metrics.update(evaluate_clustering(loaded.model, labelled, loaded.transform, progress=progress))
        metrics["cluster_dataset"] = labelled.name
    if args.json:
        print_json(metrics)
    else:
        # The table shows floats with 2 decimals: enough for percentages, too few for caption scores (fractions).
        shown = {k: f"{v:.4f}" if captioning and isinstance(v, float) else v for k, v in metrics.items()}
        print_table(f"evaluation of {loaded.directory}", [{"metric": k, "value": v} for k, v in shown.items()])
        if args.coco_results is not None:
            print(f"wrote the captions of {metrics['images']} images as COCO results → {args.coco_results}")
    return 0
