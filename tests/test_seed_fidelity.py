"""Replaying the seeds' workflows: the last differences they showed (parameter counts of quantized models,
threads per training process)."""

from __future__ import annotations

import pytest

from workbench.config.model import ModelArgs


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_models_report_their_real_number_of_weights(tiny_model_dir, bits):
    """The 4-bit log said "of 59,773,248" for a 135M model: packed weights were counted as storage elements."""
    pytest.importorskip("bitsandbytes")
    from workbench.models.loader import load_model
    from workbench.train.methods import count_parameters

    plain = load_model(ModelArgs(model_name_or_path=str(tiny_model_dir)), for_training=True).model
    quantized = load_model(ModelArgs(model_name_or_path=str(tiny_model_dir), quantization_bit=bits),
                           for_training=True).model
    assert any(p.__class__.__name__ in ("Params4bit", "Int8Params") for p in quantized.parameters())
    assert count_parameters(quantized)[1] == count_parameters(plain)[1] == sum(p.numel() for p in plain.parameters())


def test_convert_registers_its_output_and_splits_keywords_as_the_seed_writes_them(cli, shared_data, tmp_path):
    import json

    eval_dir = shared_data / "eval"
    source = ["--task", "wmt19", "--source", str(eval_dir / "wmt19_validation_newstest2018.zh"), "--target",
              str(eval_dir / "wmt19_validation_newstest2018.en"), "--max-samples", "50", "--seed", "0"]
    folder = tmp_path / "datasets"
    # The seed pastes its keyword list with full-width commas and ideographic commas.
    seed_style = cli("data", "convert", *source, "--drop-keywords", "中国，美国、经济", "--register", "mt",
                     "--dataset-dir", str(folder))
    assert seed_style.returncode == 0, seed_style.stderr
    assert "drop keywords (3): 中国, 美国, 经济" in seed_style.stdout
    assert "keyword '中国'" in seed_style.stdout  # the news set mentions China: rows were dropped for it
    info = json.loads((folder / "dataset_info.json").read_text())
    assert info["mt"] == {"file_name": "mt.json"}
    assert "registered 'mt'" in seed_style.stdout
    # The same keywords written with ASCII commas drop the same rows.
    ascii_style = cli("data", "convert", *source, "--drop-keywords", "中国,美国,经济", "--output",
                      str(tmp_path / "ascii.json"))
    assert ascii_style.returncode == 0, ascii_style.stderr
    assert json.loads((tmp_path / "ascii.json").read_text()) == json.loads((folder / "mt.json").read_text())
    check = cli("data", "check", "mt", "--dataset-dir", str(folder))
    assert check.returncode == 0, check.stdout + check.stderr
    # A registered file lives in the dataset folder; an --output elsewhere is refused before anything is written.
    outside = cli("data", "convert", *source, "--register", "mt2", "--dataset-dir", str(folder), "--output",
                  str(tmp_path / "elsewhere.json"))
    assert outside.returncode != 0 and "must be in the dataset folder" in outside.stderr
    assert not (tmp_path / "elsewhere.json").exists() and "mt2" not in json.loads(
        (folder / "dataset_info.json").read_text())


def test_keyword_lists_split_on_ascii_fullwidth_and_ideographic_commas():
    from workbench.data.converters import parse_keywords

    assert parse_keywords("中国，美国、经济, Trade\nTRADE") == ["中国", "美国", "经济", "trade"]
    assert parse_keywords(["a，b", "c"]) == ["a", "b", "c"]
    assert parse_keywords("") == []


def _identity_adapter(tiny_model_dir, out, template: str):
    """A LoRA whose B is zero (PEFT's initialisation): it answers exactly as the base, so any difference in its
    answers comes from the prompt template alone. Its run record says which template it was trained with."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(out)
    (out / "workbench_run.json").write_text(json.dumps({"stage": "sft", "finetuning_type": "lora",
                                                        "base_model": str(tiny_model_dir), "template": template}))
    return out


def test_evaluate_prompts_each_adapter_with_its_training_template(tiny_model_dir, tmp_path):
    import json

    from workbench.config.eval import EvalArgs
    from workbench.config.generation import GenerationArgs
    from workbench.evaluate.runner import evaluate

    adapter = _identity_adapter(tiny_model_dir, tmp_path / "llama2-adapter", "llama2")
    model = ModelArgs(model_name_or_path=str(tiny_model_dir), infer_dtype="float32", device="cpu")
    gen = GenerationArgs(do_sample=False)
    args = dict(task="qa", max_samples=3, max_new_tokens=6, batch_size=6)
    logs: list[str] = []
    evaluate(model, EvalArgs(**args), gen, adapters={"ident": str(adapter)}, output_dir=tmp_path / "auto",
             log=logs.append)
    assert any("templates base: jinja, ident: llama2" in line for line in logs)
    evaluate(model, EvalArgs(template="llama2", **args), gen, adapters={}, output_dir=tmp_path / "base-llama2",
             log=lambda m: None)

    def predictions(run, name):
        lines = (tmp_path / run / name / "qa" / "predictions.jsonl").read_text().splitlines()
        return [json.loads(line)["prediction"] for line in lines]

    # The adapter answered in llama2 format: exactly what the base says when prompted with llama2.
    assert predictions("auto", "ident") == predictions("base-llama2", "base")
    # An explicit template is used for every variant, with a warning naming the adapter's own.
    logs.clear()
    evaluate(model, EvalArgs(template="chatml", **args), gen, adapters={"ident": str(adapter)},
             output_dir=tmp_path / "explicit", log=logs.append)
    assert any("trained with template 'llama2', but 'chatml' is chosen" in line for line in logs)


def test_training_threads_are_an_option_and_shown_in_the_log(cli, tiny_model_dir, tmp_path):
    result = cli("train", "--model_name_or_path", str(tiny_model_dir), "--dataset", "identity", "--max_steps", "1",
                 "--cutoff_len", "64", "--torch_threads", "1", "--output_dir", str(tmp_path / "one-thread"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Threads: 1 per process (torch_threads" in result.stderr
    bad = cli("train", "--model_name_or_path", str(tiny_model_dir), "--dataset", "identity", "--torch_threads", "0",
              "--output_dir", str(tmp_path / "zero"))
    assert bad.returncode != 0 and "torch_threads" in bad.stderr


def test_default_threads_are_the_cores_shared_by_the_local_processes(monkeypatch):
    import os

    import torch

    from workbench.train.run import set_cpu_threads

    before = torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))
        assert set_cpu_threads(None).startswith("1 per process") and torch.get_num_threads() == 1
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        assert set_cpu_threads(None).startswith(f"{cores} per process ({cores} cores ÷ 1 process here")
    finally:
        torch.set_num_threads(before)


def test_chat_answers_each_adapter_in_its_training_template(tiny_model_dir, tmp_path):
    from workbench.config.generation import GenerationArgs
    from workbench.infer.engine import ChatEngine
    from workbench.models.loader import load_model

    adapter = _identity_adapter(tiny_model_dir, tmp_path / "llama2-adapter", "llama2")
    loaded = load_model(ModelArgs(model_name_or_path=str(tiny_model_dir), infer_dtype="float32", device="cpu"),
                        adapters={"ident": str(adapter)})
    engine = ChatEngine(loaded, "auto")
    assert engine.template_for("base").name == "jinja" and engine.template_for("ident").name == "llama2"
    conversation = [{"role": "user", "content": "Capital of France?"}]
    base_ids, _ = engine.encode(conversation)
    ident_ids, _ = engine.encode(conversation, variant="ident")
    assert loaded.tokenizer.decode(ident_ids).endswith("[INST] Capital of France? [/INST]")
    assert base_ids != ident_ids
    assert any("each answers in the template it was trained with: base jinja, ident llama2" in n
               for n in engine.notes())
    # Compare: one batch, each column in its own template. The identity adapter in llama2 answers as the base
    # model would when prompted in llama2.
    gen = GenerationArgs(do_sample=False, max_new_tokens=6)
    batch = engine.compare(conversation, gen)
    answers = {row.label: engine.reply(row).text for row in batch.rows}
    as_llama2 = ChatEngine(loaded, "llama2").chat(conversation, gen, variant="base").text
    assert answers["ident"] == as_llama2
    # An explicit choice applies to all, and the note names the adapter's own template.
    chosen = ChatEngine(loaded, "chatml")
    assert chosen.template_for("ident").name == "chatml"
    assert any("trained with template 'llama2', but 'chatml' is chosen" in n for n in chosen.notes())


def test_frozen_linears_stored_in_the_autocast_dtype_give_identical_numbers(tiny_model_dir):
    """Training speed: a LoRA run under bf16 autocast keeps its frozen linear weights in bf16 (no cast per matmul);
    autocast rounds float32 weights the same way, so the loss and gradients are bit-identical."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from workbench.train.methods import cast_frozen_linears

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    cast = copy.deepcopy(model)
    assert cast_frozen_linears(cast, torch.bfloat16) > 0
    assert cast.get_input_embeddings().weight.dtype == torch.float32  # tied to lm_head: stays float32
    assert all(p.dtype == torch.float32 for n, p in cast.named_parameters() if p.requires_grad)
    ids = torch.randint(0, 1000, (2, 24))
    results = []
    for m in (model, cast):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = [p.grad.clone() for n, p in m.named_parameters() if p.requires_grad]
        results.append((loss.detach(), grads))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))
