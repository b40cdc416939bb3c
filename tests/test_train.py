"""Training engine: options, bad input (refused before any model loads), every stage × method on the tiny
model, loss and attention equivalence, resume, the 2-process run, presets, and the identity quick start
on the real bundled model."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from helpers import REPO_ROOT, tiny_values

from workbench.config.base import OptionError, WorkbenchError, load_yaml
from workbench.config.train import IGNORED_KEYS, parse_train_config
from workbench.train.callbacks import BASE_KEYS, read_progress


def train(values: dict) -> dict:
    from workbench.train.run import run_training

    return run_training(parse_train_config(values), log=lambda msg: None)


def losses(out: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in read_progress(out / "progress.jsonl") if e["kind"] == "train"}


# ---- options ------------------------------------------------------------------------------------

LLAMAFACTORY_YAML = """\
### model
model_name_or_path: {model}
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: identity
template: auto
cutoff_len: 96
max_samples: 16
overwrite_cache: true
preprocessing_num_workers: 1
dataloader_num_workers: 4

### output
output_dir: {out}
logging_steps: 1
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none

### train
per_device_train_batch_size: 4
gradient_accumulation_steps: 2
learning_rate: 1.0e-4
num_train_epochs: 1.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null
flash_attn: auto
"""


def test_llamafactory_yaml_runs_with_only_the_model_path_changed(tiny_model_dir, tmp_path, cli):
    config = tmp_path / "llama3_lora_sft.yaml"
    config.write_text(LLAMAFACTORY_YAML.format(model=tiny_model_dir, out=tmp_path / "saves"))
    cfg = parse_train_config(load_yaml(config))
    assert cfg.train.warmup_ratio == 0.1 and cfg.train.gradient_accumulation_steps == 2
    assert cfg.train.ddp_timeout == 180000000 and cfg.train.dataloader_num_workers == 4
    assert [w.split("'")[1] for w in cfg.warnings] == ["flash_attn"]
    result = cli("train", str(config), "--max_steps", "2")
    assert result.returncode == 0, result.stderr
    assert "ignoring option 'flash_attn'" in result.stderr
    assert len(losses(tmp_path / "saves")) == 2


def test_unknown_keys_are_named_and_ignored_keys_are_documented():
    with pytest.raises(OptionError) as err:
        parse_train_config({"dataset": "identity", "learning_rat": 1e-4, "lora_rnak": 4})
    assert "learning_rat" in str(err.value) and "lora_rnak" in str(err.value)
    assert all(reason for reason in IGNORED_KEYS.values())
    cfg = parse_train_config({"dataset": "identity", "flash_attn": "auto", "use_unsloth": False})
    assert any("flash_attn" in w for w in cfg.warnings) and any("use_unsloth" in w for w in cfg.warnings)


@pytest.mark.parametrize("values, option, words", [
    ({"stage": "ppo"}, "stage", "not supported"),
    ({"stage": "xyz"}, "stage", "pt, sft, rm, dpo"),
    ({"cutoff_len": 0}, "cutoff_len", "minimum"),
    ({"learning_rate": -1e-4}, "learning_rate", "minimum"),
    ({"learning_rate": 0}, "learning_rate", "greater than 0"),
    ({"quantization_bit": 4, "finetuning_type": "full"}, "quantization_bit", "lora"),
    ({"quantization_bit": 8, "finetuning_type": "freeze"}, "quantization_bit", "lora"),
    ({"bf16": True, "fp16": True}, "fp16", "not both"),
    ({"eval_strategy": "steps"}, "eval_strategy", "val_size"),
    ({"deepspeed": "/nope/ds.json"}, "deepspeed", "no such file"),
    ({"pref_loss": "orpo", "stage": "dpo"}, "pref_loss", "not a DPO loss"),
    ({"use_galore": True}, "use_galore", "not supported"),
    ({"do_train": False}, "do_train", "workbench eval"),
    ({"packing": True, "stage": "dpo"}, "packing", "pt and sft"),
    ({"report_to": "comet"}, "report_to", "none, tensorboard, wandb, mlflow"),
    ({"dataset": None}, "dataset", "at least one dataset"),
])
def test_bad_options(values, option, words):
    with pytest.raises(OptionError) as err:
        parse_train_config({"dataset": "identity", **values})
    assert err.value.option == option
    assert words in str(err.value)


# ---- bad input refused before the model loads -----------------------------------------------------

@pytest.mark.parametrize("overrides, words", [
    ({"lora_target": "q_proj,query_key_value"}, "query_key_value match(es) no module of this model; its linear "
                                                "layers are: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"),
    ({"finetuning_type": "freeze", "freeze_trainable_layers": 5}, "the model has only 2 layers"),
    ({"finetuning_type": "freeze", "freeze_trainable_modules": "attn"}, "attn not found in the layers"),
    ({"fp16": True}, "float16 mixed precision needs a CUDA GPU"),
    ({"deepspeed": "z3"}, "deepspeed"),
    ({"resume_from_checkpoint": "/nonexistent/checkpoint-5"}, "no such checkpoint directory"),
    ({"resume_from_checkpoint": True}, "holds no checkpoint-* directory"),
    ({"dataset": "dpo_en_demo"}, "is a ranking (preference) dataset: train it with stage rm or dpo"),
    ({"stage": "dpo", "dataset": "alpaca_en_demo"}, "is not a ranking (preference) dataset"),
    ({"model_name_or_path": "no-such-model"}, "unknown model"),
])
def test_bad_input_is_refused_before_loading(overrides, words, tiny_model_dir, shared_data, tmp_path,
                                             no_model_load):
    values = tiny_values(tiny_model_dir, tmp_path / "out", **overrides)
    if "dpo_en_demo" in str(overrides) or "alpaca" in str(overrides):
        values["dataset_dir"] = str(shared_data / "llamafactory")
    with pytest.raises(WorkbenchError) as err:
        train(values)
    assert words in str(err.value)


def test_output_dir_with_another_run_is_refused_unless_overwritten(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    train(tiny_values(tiny_model_dir, out, max_steps=4, save_steps=2))
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-2", "checkpoint-4"}
    import workbench.models.loader as loader

    real_load = loader.load_model
    monkeypatch.setattr(loader, "load_model", lambda *a, **k: pytest.fail("loaded before refusing"))
    with pytest.raises(OptionError, match="already holds a run") as err:
        train(tiny_values(tiny_model_dir, out))
    assert err.value.option == "output_dir"
    monkeypatch.setattr(loader, "load_model", real_load)
    train(tiny_values(tiny_model_dir, out, max_steps=1, overwrite_output_dir=True))
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-1"}  # the old run's checkpoints are gone
    assert sorted(losses(out)) == [1]


def test_cli_reports_errors_without_traceback(tiny_model_dir, tmp_path, cli):
    result = cli("train", "--model_name_or_path", str(tiny_model_dir), "--dataset", "identity", "--stage", "xyz")
    assert result.returncode == 1
    assert "error: stage: 'xyz' is not one of: pt, sft, rm, dpo" in result.stderr
    assert "Traceback" not in result.stderr
    config = tmp_path / "bad.yaml"
    config.write_text(f"model_name_or_path: {tiny_model_dir}\ndataset: identity\nlearning_rat: 0.1\n")
    result = cli("train", str(config))
    assert result.returncode == 1 and "unknown option(s): learning_rat" in result.stderr
    result = cli("train", str(tmp_path / "missing.yaml"))
    assert result.returncode == 1 and "missing.yaml: config file not found" in result.stderr


# ---- every stage × method on the tiny model ----------------------------------------------------------

MATRIX = {
    "sft-lora": {},
    "sft-lora-all-dora-rslora": {"lora_target": "all", "use_dora": True, "use_rslora": True, "lora_rank": 4,
                                 "lora_dropout": 0.1, "additional_target": "embed_tokens"},
    "sft-qlora-4bit": {"quantization_bit": 4, "bf16": True},
    "sft-qlora-8bit": {"quantization_bit": 8},
    "sft-freeze": {"finetuning_type": "freeze", "freeze_trainable_layers": 1},
    "sft-full-bf16": {"finetuning_type": "full", "bf16": True},
    "sft-lora-packing-eval": {"packing": True, "val_size": 0.2, "eval_steps": 2},
    "sft-lora-padded-grouped": {"padding_free": False, "group_by_length": True, "gradient_accumulation_steps": 2,
                                "gradient_checkpointing": True},
    "sft-lora-streaming": {"streaming": True, "val_size": 4},
    "pt-lora": {"stage": "pt", "dataset": "c4_demo", "shared": True, "max_samples": 40},
    "pt-full": {"stage": "pt", "dataset": "c4_demo", "shared": True, "max_samples": 40, "finetuning_type": "full"},
    "pt-freeze": {"stage": "pt", "dataset": "c4_demo", "shared": True, "max_samples": 40, "finetuning_type": "freeze",
                  "freeze_trainable_layers": 1},
    "pt-qlora-4bit": {"stage": "pt", "dataset": "c4_demo", "shared": True, "max_samples": 40, "quantization_bit": 4},
    "rm-lora": {"stage": "rm", "dataset": "dpo_en_demo", "shared": True, "cutoff_len": 1024, "max_samples": 24,
                "val_size": 4},
    "rm-freeze": {"stage": "rm", "dataset": "dpo_en_demo", "shared": True, "cutoff_len": 1024, "max_samples": 24,
                  "finetuning_type": "freeze", "freeze_trainable_layers": 1},
    "rm-full": {"stage": "rm", "dataset": "dpo_en_demo", "shared": True, "cutoff_len": 1024, "max_samples": 24,
                "finetuning_type": "full"},
    "rm-qlora-4bit": {"stage": "rm", "dataset": "dpo_en_demo", "shared": True, "cutoff_len": 1024, "max_samples": 24,
                      "quantization_bit": 4},
    "dpo-freeze": {"stage": "dpo", "dataset": "dpo_en_demo", "shared": True, "cutoff_len": 128, "max_samples": 12,
                   "finetuning_type": "freeze", "freeze_trainable_layers": 1, "per_device_train_batch_size": 2},
    "dpo-qlora-4bit": {"stage": "dpo", "dataset": "dpo_en_demo", "shared": True, "cutoff_len": 128, "max_samples": 12,
                       "quantization_bit": 4, "per_device_train_batch_size": 2},
    "dpo-lora": {"stage": "dpo", "dataset": "dpo_en_demo", "shared": True, "cutoff_len": 128, "max_samples": 12,
                 "pref_beta": 0.2, "pref_ftx": 0.5, "per_device_train_batch_size": 2},
    "dpo-full": {"stage": "dpo", "dataset": "dpo_en_demo", "shared": True, "cutoff_len": 128, "max_samples": 12,
                 "finetuning_type": "full", "pref_loss": "ipo", "per_device_train_batch_size": 2},
}


@pytest.mark.parametrize("name", list(MATRIX))
def test_stage_method(name, tiny_model_dir, shared_data, tmp_path):
    import torch
    from safetensors.torch import load_file

    spec = dict(MATRIX[name])
    shared = spec.pop("shared", False)
    out = tmp_path / "out"
    values = tiny_values(tiny_model_dir, out, **spec)
    if shared:
        values["dataset_dir"] = str(shared_data / "llamafactory")
    summary = train(values)
    stage, method = values["stage"], values["finetuning_type"]

    entries = read_progress(out / "progress.jsonl")
    train_lines = [e for e in entries if e["kind"] == "train"]
    assert [e["step"] for e in train_lines] == [1, 2, 3]
    for e in entries:
        assert set(BASE_KEYS) <= set(e)
        assert e["total_steps"] == 3 and e["elapsed"] >= 0
    assert all(e["loss"] > 0 and e["lr"] > 0 and e["grad_norm"] is not None for e in train_lines)
    if stage in ("pt", "sft"):
        assert all(e["tokens_per_second"] > 0 for e in train_lines)
    if stage in ("rm", "dpo"):
        assert all(e["reward_accuracy"] is not None and e["reward_margin"] is not None for e in train_lines)
    if values.get("val_size"):
        evals = [e for e in entries if e["kind"] == "eval"]
        assert evals and all(e["eval_loss"] > 0 for e in evals)

    run = json.loads((out / "workbench_run.json").read_text())
    assert run["stage"] == stage and run["finetuning_type"] == method
    assert run["base_model"] == str(tiny_model_dir) and run["dataset"] == values["dataset"] and run["template"]
    resolved = parse_train_config(load_yaml(out / "config.yaml"))  # config.yaml is a valid config as written
    assert resolved.finetuning.stage == stage and resolved.train.output_dir == str(out)
    results = json.loads((out / "all_results.json").read_text())
    assert results["train_loss"] > 0 and results["num_input_tokens_seen"] > 0
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "tokenizer.json").is_file() and (out / "chat_template.jinja").is_file()
    assert summary["output_dir"] == str(out)

    if method == "lora":
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        weights = load_file(out / "adapter_model.safetensors")
        lora_b = [t for k, t in weights.items() if "lora_B" in k]
        assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: it moved, so it trained
        cls = AutoModelForSequenceClassification if stage == "rm" else AutoModelForCausalLM
        kwargs = {"num_labels": 1} if stage == "rm" else {}
        base = cls.from_pretrained(tiny_model_dir, **kwargs)
        PeftModel.from_pretrained(base, out)  # plain PEFT loads it
    else:
        trained = load_file(out / "model.safetensors")
        original = load_file(tiny_model_dir / "model.safetensors")
        changed = {k for k in original if k in trained and not torch.equal(original[k], trained[k].to(original[k].dtype))}
        if method == "freeze":
            assert changed and all(".layers.1." in k for k in changed)  # only the last layer trained
        else:
            assert any(".layers.0." in k for k in changed) and any(".layers.1." in k for k in changed)


def test_training_continues_from_an_adapter(tiny_model_dir, tmp_path):
    first = tmp_path / "first"
    train(tiny_values(tiny_model_dir, first, max_steps=6, learning_rate=2e-2))
    second = tmp_path / "second"
    train(tiny_values(tiny_model_dir, second, adapter_name_or_path=str(first), max_steps=1, learning_rate=1e-9))
    fresh = tmp_path / "fresh"
    train(tiny_values(tiny_model_dir, fresh, max_steps=1))
    # Step 1 of the continued run starts from the trained adapter, so it is where the first run ended up.
    assert losses(second)[1] < losses(fresh)[1] - 0.05
    with pytest.raises(OptionError, match="pt and sft"):
        train(tiny_values(tiny_model_dir, tmp_path / "dpo", stage="dpo", adapter_name_or_path=str(first),
                          dataset="dpo_en_demo", dataset_dir=str(REPO_ROOT.parent / "shared/data/llamafactory")))


@pytest.mark.parametrize("backend", ["wandb", "mlflow"])
def test_report_to_a_backend_that_is_not_installed(backend):
    import importlib.util

    if importlib.util.find_spec(backend) is not None:
        pytest.skip(f"{backend} is installed here")
    with pytest.raises(OptionError, match=f"{backend} is not installed"):
        parse_train_config({"dataset": "identity", "report_to": f"tensorboard,{backend}"})


# ---- equivalences -------------------------------------------------------------------------------------

def test_padding_free_loss_equals_standard_padded_loss(tiny_model_dir, tmp_path):
    """Our batches + loss (logits only at labelled positions) give HF's loss on a padded batch."""
    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments

    from workbench.train.attention import use_varlen_attention
    from workbench.train.collator import CausalLMCollator
    from workbench.train.trainer import CausalLMTrainer

    torch.manual_seed(0)
    features = []
    for n in (17, 9, 30):
        ids = torch.randint(5, 1000, (n,)).tolist()
        labels = [-100] * (n // 3) + ids[n // 3:]
        features.append({"input_ids": ids, "labels": labels})
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    padded = CausalLMCollator(pad_token_id=0, padding_free=False)(features)
    with torch.no_grad():
        expected = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"],
                         labels=padded["labels"]).loss
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = CausalLMTrainer(model=model, args=args)
    for varlen in (False, True):
        if varlen:
            assert use_varlen_attention(model)
        for batch in (CausalLMCollator(pad_token_id=0)(features), padded):
            with torch.no_grad():
                loss = trainer.compute_loss(model, dict(batch))
            assert torch.allclose(loss, expected, atol=1e-5), (varlen, loss, expected)
    flat = CausalLMCollator(pad_token_id=0)(features)
    assert flat["input_ids"].shape == (1, 56) and "attention_mask" not in flat and flat["_real_tokens"] == 56
    assert flat["position_ids"][0, 17].item() == 0 and flat["labels"][0, 17].item() == -100


def test_packing_with_padded_batches_trains(tiny_model_dir, tmp_path):
    """packing: true + padding_free: false batches rows with collate_packed, whose batch carries use_cache=False;
    the trainer passes use_cache=False itself, once (training and evaluation)."""
    from workbench.train.collator import CausalLMCollator

    row = {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "position_ids": [0, 1, 2]}
    assert CausalLMCollator(pad_token_id=0, padding_free=False)([row, row])["use_cache"] is False  # the path taken
    out = tmp_path / "out"
    train(tiny_values(tiny_model_dir, out, packing=True, padding_free=False, val_size=0.2, eval_steps=2))
    assert sorted(losses(out)) == [1, 2, 3] and all(loss > 0 for loss in losses(out).values())
    evals = [e for e in read_progress(out / "progress.jsonl") if e["kind"] == "eval"]
    assert evals and all(e["eval_loss"] > 0 for e in evals)


def test_progress_line_with_a_nan_loss(tmp_path):
    """A NaN/inf loss is stored as null and printed as "nan" (it used to crash formatting None with :.4f)."""
    import io
    from types import SimpleNamespace

    from workbench.train.callbacks import ProgressCallback

    entry = dict.fromkeys(BASE_KEYS)
    entry.update(kind="train", step=2, total_steps=3, loss=None, lr=1e-3)
    assert ProgressCallback._line(entry).startswith("[train] step 2/3  loss nan  lr 0.001")
    assert "loss nan" in ProgressCallback._line({**entry, "loss": float("nan")})
    assert ProgressCallback._line({**entry, "kind": "eval", "eval_loss": None}) == "[eval] step 2/3 eval_loss nan"
    echo = io.StringIO()
    callback = ProgressCallback(tmp_path / "progress.jsonl", echo=echo)
    state = SimpleNamespace(is_world_process_zero=True, global_step=1, max_steps=3, epoch=0.5,
                            num_input_tokens_seen=0)
    callback.on_log(None, state, None, logs={"loss": float("nan"), "learning_rate": 1e-3, "grad_norm": float("inf")})
    assert echo.getvalue().startswith("[train] step 1/3  loss nan")
    assert read_progress(tmp_path / "progress.jsonl")[0]["loss"] is None


def test_varlen_attention_matches_a_block_diagonal_mask():
    import torch
    import torch.nn.functional as F

    from workbench.train.attention import varlen_attention

    torch.manual_seed(0)
    lens = [5, 3, 7]
    total = sum(lens)
    q, k, v = torch.randn(1, 4, total, 8), torch.randn(1, 2, total, 8), torch.randn(1, 2, total, 8)
    positions = torch.cat([torch.arange(n) for n in lens])[None]
    seg = torch.cat([torch.full((n,), i) for i, n in enumerate(lens)])
    mask = (seg[:, None] == seg[None, :]) & torch.ones(total, total, dtype=torch.bool).tril()
    expected = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                              attn_mask=mask).transpose(1, 2)

    class Layer(torch.nn.Module):
        pass

    out, _ = varlen_attention(Layer().eval(), q, k, v, None, position_ids=positions)
    assert torch.allclose(out, expected, atol=1e-5)
    # Right-padded rows with a 2D mask: padding rows come out as zeros, real tokens as plain causal attention.
    row_mask = torch.tensor([[1] * 6 + [0] * 9]).bool()
    out, _ = varlen_attention(Layer().eval(), q, k, v, row_mask)
    causal = F.scaled_dot_product_attention(q[:, :, :6], k[:, :, :6].repeat_interleave(2, 1),
                                            v[:, :, :6].repeat_interleave(2, 1), is_causal=True).transpose(1, 2)
    assert torch.allclose(out[:, :6], causal, atol=1e-5) and out[:, 6:].abs().sum() == 0


def test_resume_reproduces_the_uninterrupted_loss_curve(tiny_model_dir, tmp_path):
    full = tmp_path / "full"
    values = tiny_values(tiny_model_dir, full, max_steps=6, save_steps=3, lora_dropout=0.1)
    train(values)
    reference = losses(full)
    assert sorted(reference) == [1, 2, 3, 4, 5, 6]

    again = tmp_path / "again"
    train({**values, "output_dir": str(again)})
    assert losses(again) == reference  # same seed, data and config → same curve

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")  # as if stopped after step 3
    train({**values, "output_dir": str(resumed), "resume_from_checkpoint": True})
    assert losses(resumed) == {s: reference[s] for s in (4, 5, 6)}
    from workbench.train.outputs import resolve_resume

    assert resolve_resume(str(full / "checkpoint-3"), resumed) == (full / "checkpoint-3").resolve()
    assert resolve_resume("checkpoint-3", full) == (full / "checkpoint-3").resolve()  # relative to output_dir
    assert resolve_resume("true", full) == full / "checkpoint-6"
    with pytest.raises(OptionError, match="not a training checkpoint"):
        resolve_resume(str(tmp_path), full)


def test_save_total_limit_and_tensorboard(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    train(tiny_values(tiny_model_dir, out, max_steps=6, save_steps=2, save_total_limit=2, report_to="tensorboard"))
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-4", "checkpoint-6"}
    assert list((out / "runs").rglob("events.out.tfevents.*"))


# ---- launching ----------------------------------------------------------------------------------------

def test_two_process_run_matches_one_process_with_the_doubled_batch(tiny_model_dir, tmp_path, cli):
    common = ["train", "--model_name_or_path", str(tiny_model_dir), "--dataset", "identity", "--cutoff_len", "96",
              "--max_steps", "3", "--logging_steps", "1", "--lora_target", "q_proj,v_proj", "--learning_rate", "1e-2"]
    two = cli(*common, "--output_dir", str(tmp_path / "two"), "--per_device_train_batch_size", "4",
              "--launch", "--num_processes", "2", timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "accelerate.commands.launch --multi_gpu --num_processes 2" in two.stdout
    assert "2 processes (gloo)" in two.stderr
    # Each rank gets its share of the cores, and DDP does not walk the graph for unused parameters (nor warn).
    assert "÷ 2 processes here" in two.stderr and "find_unused_parameters=True" not in two.stderr
    train(tiny_values(tiny_model_dir, tmp_path / "one", cutoff_len=96, max_steps=3, learning_rate=1e-2, seed=42,
                      per_device_train_batch_size=8))
    two_losses, one_losses = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert sorted(two_losses) == [1, 2, 3]
    assert two_losses == pytest.approx(one_losses, abs=1e-5)
    assert (tmp_path / "two" / "adapter_model.safetensors").is_file()


def test_accelerate_command(tiny_model_dir):
    from workbench.config.train import LaunchArgs
    from workbench.config.base import option_flags
    from workbench.train.distributed import accelerate_argv

    cfg = parse_train_config({"model_name_or_path": str(tiny_model_dir), "dataset": "identity", "bf16": True,
                              "deepspeed": "z3"})
    argv = accelerate_argv(cfg, LaunchArgs(launch=True, num_processes=8), ["cfg.yaml"])
    assert argv[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    joined = " ".join(argv)
    assert f"--use_deepspeed --deepspeed_config_file {REPO_ROOT / 'presets/deepspeed/ds_z3_config.json'}" in joined
    assert "--multi_gpu" not in argv and "--mixed_precision bf16" in joined
    assert argv[-4:] == ["-m", "workbench", "train", "cfg.yaml"]
    multi = LaunchArgs(launch=True, num_processes=16, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1",
                       main_process_port=29501)
    cfg = parse_train_config({"model_name_or_path": str(tiny_model_dir), "dataset": "identity"})
    joined = " ".join(accelerate_argv(cfg, multi, []))
    assert ("--multi_gpu --num_processes 16 --num_machines 2 --machine_rank 1 --main_process_ip 10.0.0.1 "
            "--main_process_port 29501 --mixed_precision no") in joined
    with pytest.raises(OptionError, match="main_process_ip"):
        LaunchArgs(num_machines=2)
    assert option_flags({"a": None, "b": True, "c": [1, 2], "d": 0.5}) == ["--a", "none", "--b", "true", "--c", "1,2",
                                                                          "--d", "0.5"]


def test_launch_flags_win_over_the_yaml_and_launched_ranks_do_not_relaunch(tmp_path, monkeypatch):
    from workbench.cli import build_parser
    from workbench.config.train import LaunchArgs
    from workbench.train.cli import collect, should_launch
    from workbench.train.run import LAUNCHED_ENV

    config = tmp_path / "config.yaml"
    config.write_text("dataset: identity\nlaunch: true\nnum_processes: 4\nlearning_rate: 1.0e-3\n")
    args = build_parser("train").parse_args(["train", str(config), "--num_processes", "2", "--learning_rate", "2e-3"])
    values, overrides, launch_values = collect(args)
    launch = LaunchArgs(**launch_values)
    assert launch.launch and launch.num_processes == 2  # the command line wins over the YAML
    assert float(values["learning_rate"]) == 2e-3 and "num_processes" not in values and "launch" not in values
    assert overrides == {"learning_rate": "2e-3"}  # what the launched processes get besides the YAML
    monkeypatch.delenv(LAUNCHED_ENV, raising=False)
    assert should_launch(launch) and not should_launch(LaunchArgs())
    # A launched rank reads the same YAML (launch: true) but must train, not call accelerate launch again.
    monkeypatch.setenv(LAUNCHED_ENV, "1")
    assert not should_launch(launch)


def test_deepspeed_without_the_package_is_a_clear_error(tiny_model_dir, tmp_path, cli):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    result = cli("train", "--model_name_or_path", str(tiny_model_dir), "--dataset", "identity", "--deepspeed", "z2",
                 "--output_dir", str(tmp_path / "ds"), "--launch", "--num_processes", "2")
    assert result.returncode == 1
    assert "deepspeed package is not installed" in result.stderr and "Traceback" not in result.stderr
    # The command is shown before the refusal, and the refused launch leaves no empty folder behind.
    assert "accelerate.commands.launch --use_deepspeed" in result.stdout
    assert not (tmp_path / "ds").exists()


def test_launch_dry_run_prints_the_command_and_writes_nothing(tiny_model_dir, tmp_path, cli):
    result = cli("train", "--model_name_or_path", str(tiny_model_dir), "--dataset", "identity", "--output_dir",
                 str(tmp_path / "dry"), "--launch", "--num_processes", "2", "--dry-run")
    assert result.returncode == 0, result.stderr
    command = result.stdout.strip().splitlines()[-1]
    assert "accelerate.commands.launch --multi_gpu --num_processes 2" in command
    assert command.endswith(f"-m workbench train --model_name_or_path {tiny_model_dir} --dataset identity "
                            f"--output_dir {tmp_path / 'dry'}")
    assert not (tmp_path / "dry").exists()
    alone = cli("train", "--model_name_or_path", str(tiny_model_dir), "--dataset", "identity", "--dry-run")
    assert alone.returncode == 1 and "add --launch" in alone.stderr


def test_deepspeed_launch_on_a_cpu_is_refused_before_any_rank_starts(tiny_model_dir, tmp_path, cli):
    # deepspeed cannot be installed usefully on this CPU machine: an empty stand-in package makes it importable,
    # so the launcher reaches the device check that must refuse before accelerate spawns ranks.
    stand_in = tmp_path / "site" / "deepspeed"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text("")
    result = cli("train", "--model_name_or_path", str(tiny_model_dir), "--dataset", "identity", "--deepspeed", "z2",
                 "--output_dir", str(tmp_path / "ds"), "--launch", "--num_processes", "2",
                 env={"PYTHONPATH": str(tmp_path / "site"), "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 1
    assert "DeepSpeed needs CUDA GPUs" in result.stderr and "Traceback" not in result.stderr
    assert "[rank" not in result.stderr and "torchrun" not in result.stderr
    assert "accelerate.commands.launch --use_deepspeed" in result.stdout
    assert not (tmp_path / "ds").exists()


# ---- presets -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", sorted(p.name for p in (REPO_ROOT / "presets").glob("*.yaml")))
def test_presets_are_valid_configs(preset):
    cfg = parse_train_config(load_yaml(REPO_ROOT / "presets" / preset))
    assert not cfg.warnings
    assert cfg.data.dataset_names()


def test_deepspeed_presets():
    for name, stage, offload in [("ds_z2_config.json", 2, False), ("ds_z2_offload_config.json", 2, True),
                                 ("ds_z3_config.json", 3, False), ("ds_z3_offload_config.json", 3, True)]:
        data = json.loads((REPO_ROOT / "presets" / "deepspeed" / name).read_text())
        assert data["zero_optimization"]["stage"] == stage
        assert ("offload_optimizer" in data["zero_optimization"]) == offload
        assert data["train_micro_batch_size_per_gpu"] == "auto"  # filled in from the training options


# ---- the real bundled model -----------------------------------------------------------------------------

@pytest.mark.integration
def test_cpu_quickstart_teaches_the_bundled_model_its_identity(bundled_model_dir, tmp_path, cli):
    """presets/cpu_quickstart.yaml as shipped: loss falls, plain PEFT loads the adapter, the answer changes."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "identity"
    # About a minute on 2 idle cores; the timeout only guards against a hang on a busy machine.
    result = cli("train", str(REPO_ROOT / "presets" / "cpu_quickstart.yaml"), "--output_dir", str(out), timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    curve = losses(out)
    steps = sorted(curve)
    assert curve[steps[-1]] < 0.5 * curve[steps[0]]

    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)

    def answer(model) -> str:
        with torch.no_grad():
            ids = model.generate(**prompt, max_new_tokens=40, do_sample=False)
        return tokenizer.decode(ids[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    base = AutoModelForCausalLM.from_pretrained(bundled_model_dir, dtype=torch.float32).eval()
    before = answer(base)
    tuned = PeftModel.from_pretrained(base, out).eval()
    after = answer(tuned)
    identity = json.loads((REPO_ROOT / "data" / "identity.json").read_text())
    trained_answers = {row["output"] for row in identity}
    assert after != before
    assert any(after[:30] in ans for ans in trained_answers), (before, after)
    print(f"\nbefore: {before!r}\nafter:  {after!r}")
