"""examples/timm_train.py (timm.create_model, forward_features / forward_head(pre_logits=True) through the adapter),
and the adapter's ViT pooling: Dense MultiMix mixes patch tokens, its pooled term is the model's own head."""

from pathlib import Path

import pytest
from conftest import load_script
import torch

import multimix
import multimix.functional as MF

timm = pytest.importorskip("timm")
pytest.importorskip("torchvision")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "timm_train.py"


@pytest.fixture(scope="module")
def example():
    return load_script(EXAMPLE)


@pytest.mark.parametrize("model,method,extra", [
    ("resnet18", "multimix", ["--distill"]),
    ("vit_tiny_patch16_224", "dense_multimix", []),
])
def test_timm_training_script(example, image_folder, model, method, extra, capsys):
    result = example.main(["--data-dir", str(image_folder), "--model", model, "--method", method, "--num-mix", "32",
                           "--epochs", "2", "--batch-size", "12", "--lr", "0.01", *extra])
    assert result["steps"] == 2 * (36 // 12)  # 3 classes × 12 training images, 3 steps per epoch
    assert result["teacher_updates"] in (None, result["steps"])
    assert torch.isfinite(torch.tensor(result["final_loss"])) and 0 <= result["test_accuracy"] <= 100
    assert "test accuracy" in capsys.readouterr().out


def test_vit_dense_multimix_mixes_patch_tokens_and_pools_with_the_class_token():
    """A ViT classifies from its class token: the positions are its 4 patch tokens (not 5 with the class token),
    and the pooled term's logits are Λ times the timm model's own logits."""
    raw = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32).eval()
    model = multimix.models.adapt(raw)
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    features = model.encode(x)
    assert features.shape[2:] == (5,) and model.positions(features).shape[2:] == (4,)
    method = multimix.create_method("dense_multimix", n=16, generator=torch.Generator().manual_seed(0))
    mixed, pooled = method.terms(model, x, y)
    assert mixed.logits.shape == (16 * 4, 3)  # n tuples × 4 patch positions
    replay = multimix.create_method("dense_multimix", n=16, generator=torch.Generator().manual_seed(0))
    lam = replay.sample_lam(6, "cpu")
    with torch.no_grad():
        torch.testing.assert_close(pooled.logits, MF.interpolate(lam, raw(x)), rtol=1e-4, atol=1e-5)
