"""MultiMix in the Hugging Face Transformers Trainer (CPU, tiny models built from configs, nothing downloaded)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import multimix  # noqa: E402
import multimix.functional as MF  # noqa: E402
from multimix.integrations.hf import MixingTrainer, find_classifier  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "hf_image_classification.py"


class TokenTask(torch.utils.data.Dataset):
    """Sequences of 8 tokens; class c ∈ {0, 1, 2} is the marker token 10 + c hidden among random tokens 20..49."""

    def __init__(self, size, seed):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 3, (size,), generator=g)
        self.ids = torch.randint(20, 50, (size, 8), generator=g)
        self.ids[torch.arange(size), torch.randint(1, 8, (size,), generator=g)] = 10 + self.labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": self.labels[i]}


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=16, num_labels=3,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(config)


def arguments(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, per_device_eval_batch_size=64,
                num_train_epochs=1, learning_rate=3e-3, use_cpu=True, save_strategy="no", report_to=[],
                disable_tqdm=True, seed=0, logging_steps=1)
    return transformers.TrainingArguments(**{**base, **kw})


def batch(dataset, rows):
    return transformers.default_data_collator([dataset[i] for i in rows])


def test_bert_text_classifier_learns_and_evaluates_with_its_own_loss(tmp_path):
    train, test = TokenTask(384, 0), TokenTask(64, 1)
    model = tiny_bert()
    trainer = MixingTrainer(model=model, args=arguments(tmp_path, num_train_epochs=6), train_dataset=train,
                            eval_dataset=test, method=multimix.create_method("multimix", n=64))
    trainer.train()
    assert trainer.method.steps == trainer.state.global_step == 6 * 384 // 16
    metrics = trainer.evaluate()
    inputs = batch(test, range(64))
    with torch.no_grad():
        logits = model.eval()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    assert metrics["eval_loss"] == pytest.approx(F.cross_entropy(logits, inputs["labels"]).item(), rel=1e-5)
    assert (logits.argmax(1) == inputs["labels"]).float().mean() > 0.6  # chance: 1/3


def test_the_training_loss_is_multimix_at_the_classifier_input_and_accumulation_divides_it_once(tmp_path):
    """The loss is MultiMix of the classifier's input Z (BERT's pooled output): with a linear classifier g the mixed
    logits are Λ g(Z). Under accumulation over 2 micro-batches the gradient is that of their mean loss."""
    train = TokenTask(32, 0)
    model = tiny_bert()
    method = multimix.create_method("multimix", n=16, generator=torch.Generator().manual_seed(3))
    trainer = MixingTrainer(model=model, args=arguments(tmp_path, gradient_accumulation_steps=2), train_dataset=train,
                            method=method)
    inputs = batch(train, range(8))
    captured = []
    handle = model.classifier.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    loss = trainer.compute_loss(model.train(), inputs)
    handle.remove()
    z = captured[0]  # what BERT's classifier received (pooled output after its dropout)
    lam = MF.dirichlet(16, 8, 1.0 / 8, generator=torch.Generator().manual_seed(3))
    reference = multimix.MultiMix(n=16)(z, inputs["labels"], model.classifier, lam=lam)
    torch.testing.assert_close(loss, reference)
    assert torch.allclose(MF.interpolate(lam, model.classifier(z)), model.classifier(MF.interpolate(lam, z)),
                          atol=1e-5)  # Λ g(Z) = g(ΛZ): mixing the logits is mixing the classifier's input

    params = [p for p in model.parameters() if p.requires_grad]
    halves = [batch(train, range(0, 4)), batch(train, range(4, 8))]
    method.generator.manual_seed(5)
    trainer.current_gradient_accumulation_steps = 2
    model.zero_grad()
    for half in halves:
        trainer.training_step(model, half)
    accumulated = [p.grad.clone() for p in params]
    method.generator.manual_seed(5)
    model.zero_grad()
    reference = sum(trainer.compute_loss(model, half) for half in halves) / 2
    for a, b in zip(accumulated, torch.autograd.grad(reference, params)):
        torch.testing.assert_close(a, b)


class Images(torch.utils.data.Dataset):
    """3 classes of 16×16 images, told apart by brightness."""

    def __init__(self, size, seed):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 3, (size,), generator=g)
        self.pixels = torch.rand(size, 3, 16, 16, generator=g) + self.labels.view(-1, 1, 1, 1).float()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixel_values": self.pixels[i], "labels": self.labels[i]}


def test_vit_trains_under_bf16_autocast(tmp_path):
    """bf16=True applies: the model's forward, and so its classifier, runs under the Trainer's autocast."""
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=64, num_labels=3)
    model = transformers.ViTForImageClassification(config)
    before = model.classifier.weight.detach().clone()
    dtypes = set()
    model.classifier.register_forward_hook(lambda module, args, out: dtypes.add(out.dtype) if module.training else None)
    trainer = MixingTrainer(model=model, args=arguments(tmp_path, bf16=True, num_train_epochs=2),
                            train_dataset=Images(96, 0), eval_dataset=Images(32, 1),
                            method=multimix.create_method("multimix", n=32))
    trainer.train()
    assert dtypes == {torch.bfloat16}
    assert not torch.equal(before, model.classifier.weight) and model.classifier.weight.dtype == torch.float32
    assert torch.isfinite(torch.tensor(trainer.evaluate()["eval_loss"]))


def test_a_model_without_a_linear_classifier_is_refused_in_one_line(tmp_path):
    config = transformers.RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=32, max_position_embeddings=20, num_labels=3)
    model = transformers.RobertaForSequenceClassification(config)
    with pytest.raises(ValueError, match="^RobertaForSequenceClassification: its classifier is a "
                                         "RobertaClassificationHead, not a linear map") as err:
        MixingTrainer(model=model, args=arguments(tmp_path), train_dataset=TokenTask(8, 0),
                      method=multimix.create_method("multimix"))
    assert "\n" not in str(err.value)
    assert find_classifier(tiny_bert()) is not None
    with pytest.raises(TypeError, match="must be a multimix MultiMix method"):
        MixingTrainer(model=tiny_bert(), args=arguments(tmp_path), method=multimix.create_method("mixup"))


def test_two_process_ddp_ends_with_equal_weights(tmp_path, image_folder):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    record = tmp_path / "rank"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), str(EXAMPLE), "--data-dir", str(image_folder), "--img-size", "16",
                           "--patch-size", "8", "--hidden-size", "32", "--layers", "1", "--epochs", "2",
                           "--batch-size", "6", "--num-mix", "32", "--out-dir", str(tmp_path / "out"),
                           "--record", str(record)],
                          env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank.{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 2 * 36 // 12  # 36 images, 6 per process and step
    assert ranks[0]["weights"] == ranks[1]["weights"]
