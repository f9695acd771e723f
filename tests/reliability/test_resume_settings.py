"""What --resume takes from the new run config: a longer run and a new learning rate take effect, and the
schedule keeps its place."""
import math

import polymodal
from tests.run_helpers import read_log


def config(model: dict, out, **train) -> dict:
    return {"model": model, "data": {"train": {"name": "shapes", "split": "train", "size": 64, "image_size": 32},
                                     "val": None},
            "train": {"batch_size": 16, "warmup_steps": 2, "log_every": 1, "checkpoint_every": 0,
                      "precision": "fp32", **train},
            "out": str(out)}


def test_resume_with_more_epochs_and_a_new_learning_rate(tmp_path, tiny_model_config):
    out = tmp_path / "run"
    polymodal.run_training(polymodal.load_run_config(config(tiny_model_config, out, epochs=1, lr=1e-3)),
                           progress=False)
    resumed = polymodal.run_training(polymodal.load_run_config(config(tiny_model_config, out, epochs=3, lr=4e-3)),
                                     resume=True, progress=False)
    assert resumed.position.step == 12
    records = {r["step"]: r for r in read_log(out) if "lr" in r}
    # After step s the optimizer holds the rate of step s + 1: warmup over 2 steps, then cosine to 0 at step 12.
    def expected(step: int, lr: float, total: int) -> float:
        if step < 2:
            return lr * (step + 1) / 2
        return lr * 0.5 * (1 + math.cos(math.pi * min((step - 2) / (total - 2), 1.0)))

    assert math.isclose(records[4]["lr"], expected(4, 1e-3, 4), abs_tol=1e-12)  # the first run ended its schedule
    for step in range(5, 13):
        assert math.isclose(records[step]["lr"], expected(step, 4e-3, 12), rel_tol=1e-9), (step, records[step])
