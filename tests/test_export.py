"""Export: adapters merged into a standalone model, several adapters combined into one, and every bad
input refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import make_tiny_model

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn.",
    "List three prime numbers.",
    "Translate 'good morning' into Spanish.",
]


def make_adapter(model_dir: Path, out: Path, *, r=4, seed=0, targets=("q_proj", "v_proj"), alpha=None,
                 quantization_bit=None, run: dict | None = None, **lora_kwargs) -> Path:
    """A LoRA with random A and B (init_lora_weights=False), so lora_B is non-zero and the adapter matters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.manual_seed(seed)
    kwargs = {}
    if quantization_bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32, bnb_4bit_quant_storage=torch.float32)
        kwargs["device_map"] = {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kwargs)
    config = LoraConfig(r=r, lora_alpha=alpha or 2 * r, target_modules=list(targets), init_lora_weights=False,
                        **lora_kwargs)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # random B of a size that moves greedy outputs of the tiny model
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    peft_model.save_pretrained(out)
    if run is not None or quantization_bit:
        record = {"stage": "sft", "finetuning_type": "lora", "base_model": str(model_dir), "template": "auto",
                  "dataset": "demo", "quantization_bit": quantization_bit, **(run or {})}
        (out / "workbench_run.json").write_text(json.dumps(record))
    return out


def prompt_ids(tokenizer, prompt):
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)


def greedy(model, tokenizer, prompts=PROMPTS, max_new_tokens=12) -> list[list[int]]:
    import torch

    outs = []
    for prompt in prompts:
        inputs = prompt_ids(tokenizer, prompt)
        with torch.inference_mode():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id)
        outs.append(out[0, inputs["input_ids"].shape[1]:].tolist())
    return outs


def logits(model, tokenizer, prompts=PROMPTS) -> list:
    """Next-token logits at every prompt position: a much finer check than greedy tokens on a random model."""
    import torch

    out = []
    for prompt in prompts:
        with torch.inference_mode():
            out.append(model(**prompt_ids(tokenizer, prompt)).logits[0].float())
    return out


def assert_same_logits(got: list, expected: list, atol=1e-4) -> None:
    import torch

    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)


def max_diff(got: list, expected: list) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(got, expected))


def load_plain(path, **kwargs):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(path, dtype=kwargs.pop("dtype", torch.float32), **kwargs).eval(),
            AutoTokenizer.from_pretrained(path))


def base_plus_adapters(model_dir, adapters: dict[str, Path], active=None):
    from peft import PeftModel

    model, tokenizer = load_plain(model_dir)
    names = list(adapters)
    peft_model = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        peft_model.load_adapter(adapters[name], adapter_name=name)
    peft_model.base_model.set_adapter(active or names)
    return peft_model.eval(), tokenizer


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir, tmp_path_factory):
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapters") / "a", run={})


# ---- export --------------------------------------------------------------------------------------

def file_digests(directory: Path) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def test_export_matches_base_plus_adapter_and_loads_without_peft(cli, tiny_model_dir, tiny_adapter, tmp_path):
    out = tmp_path / "merged"
    before = file_digests(tiny_model_dir), file_digests(tiny_adapter)
    progress = tmp_path / "progress.jsonl"
    result = cli("export", "--model", str(tiny_model_dir), "--adapter", str(tiny_adapter), "--out", str(out),
                 "--dtype", "fp32", "--shard-size", "5MB", "--progress-file", str(progress))
    assert result.returncode == 0, result.stderr
    assert f"Merged model saved to {out}" in result.stdout
    files = {p.name for p in out.iterdir()}
    # Sharded safetensors with an index, config, generation config, tokenizer and chat template; no adapter files.
    assert "model.safetensors.index.json" in files and len([f for f in files if f.endswith(".safetensors")]) > 1
    assert {"config.json", "generation_config.json", "tokenizer.json", "workbench_export.json"} <= files
    assert "chat_template.jinja" in files or "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
    assert not any(f.startswith("adapter_") for f in files)
    assert leftovers(tmp_path) == []
    # The merge adds in place to memory-mapped weights: the files it read must be untouched.
    assert (file_digests(tiny_model_dir), file_digests(tiny_adapter)) == before
    steps = [json.loads(line) for line in progress.read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 8)) and steps[-1]["total_steps"] == 7

    merged, tokenizer = load_plain(out)
    assert not hasattr(merged, "peft_config") or not merged.peft_config
    base, _ = load_plain(tiny_model_dir)
    with_adapter, _ = base_plus_adapters(tiny_model_dir, {"a": tiny_adapter})
    # The adapter must move the outputs for the comparison to mean anything (the tiny random model's greedy
    # tokens barely vary, so logits are compared too; the bundled-model test below compares real text).
    expected = logits(with_adapter, tokenizer)
    assert max_diff(expected, logits(base, tokenizer)) > 0.05
    assert_same_logits(logits(merged, tokenizer), expected)
    assert greedy(merged, tokenizer) == greedy(with_adapter, tokenizer)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith("<|im_start|>")
    record = json.loads((out / "workbench_export.json").read_text())
    assert record["dtype"] == "float32" and record["peak_rss_mb"] > 0 and record["notes"] == []


def test_export_bf16_dtype_and_overwrite(cli, tiny_model_dir, tiny_adapter, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "merged"
    first = cli("export", "--model", str(tiny_model_dir), "--adapter", str(tiny_adapter), "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert json.loads((out / "workbench_export.json").read_text())["dtype"] == "float32"  # auto: the base's dtype

    again = cli("export", "--model", str(tiny_model_dir), "--adapter", str(tiny_adapter), "--out", str(out))
    assert again.returncode == 1 and "is not empty" in again.stderr and "--overwrite" in again.stderr

    result = cli("export", "--model", str(tiny_model_dir), "--adapter", str(tiny_adapter), "--out", str(out),
                 "--dtype", "bf16", "--overwrite")
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    with safe_open(str(next(out.glob("*.safetensors"))), framework="pt") as f:
        assert all(str(f.get_slice(k).get_dtype()) == "BF16" for k in f.keys())
    assert leftovers(tmp_path) == []


def test_export_bundled_model_matches_base_plus_adapter(cli, bundled_model_dir, tmp_path):
    adapter = make_adapter(bundled_model_dir, tmp_path / "bundled-adapter", r=8,
                           targets=("q_proj", "k_proj", "v_proj", "o_proj"), run={"base_model": "smollm2-135m-instruct"})
    out = tmp_path / "bundled-merged"
    before = file_digests(bundled_model_dir)
    result = cli("export", "--model", "smollm2-135m-instruct", "--adapter", str(adapter), "--out", str(out),
                 "--dtype", "float32")
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "workbench_export.json").read_text())
    print(f"bundled export peak RSS: {record['peak_rss_mb']} MiB")  # reported in the issue note
    assert file_digests(bundled_model_dir) == before  # merged in place in memory, never in the cached model

    merged, tokenizer = load_plain(out)
    base, _ = load_plain(bundled_model_dir)
    with_adapter, _ = base_plus_adapters(bundled_model_dir, {"a": adapter})
    expected = greedy(with_adapter, tokenizer, max_new_tokens=16)
    assert expected != greedy(base, tokenizer, max_new_tokens=16)
    assert greedy(merged, tokenizer, max_new_tokens=16) == expected


def test_qlora_adapter_merges_into_dequantized_base(cli, tiny_model_dir, tmp_path):
    from workbench.config.model import ModelArgs
    from workbench.models.loader import load_model

    adapter = make_adapter(tiny_model_dir, tmp_path / "qlora", quantization_bit=4)
    out = tmp_path / "qlora-merged"
    result = cli("export", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "note: QLoRA" in result.stdout and "dequantized 4-bit" in result.stdout
    record = json.loads((out / "workbench_export.json").read_text())
    assert record["quantization_merged_from"] == 4
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config

    merged, tokenizer = load_plain(out)
    quantized = load_model(ModelArgs(model_name_or_path=str(tiny_model_dir), quantization_bit=4,
                                     infer_dtype="float32"), adapters={"q": str(adapter)})
    full_precision = base_plus_adapters(tiny_model_dir, {"q": adapter})[0]
    expected = logits(quantized.model, tokenizer)
    # bitsandbytes' CPU 4-bit kernel rounds a little differently from a float32 matmul of the dequantized
    # weights (measured ~0.003 on logits of size ~1), so the merged model is compared by distance: it must
    # sit far closer to the quantized base + adapter than the original weights + adapter do (~0.09).
    merged_gap = max_diff(logits(merged, tokenizer), expected)
    original_gap = max_diff(logits(full_precision, tokenizer), expected)
    assert merged_gap < 0.1 * original_gap, (merged_gap, original_gap)
    assert greedy(merged, tokenizer) == greedy(quantized.model, tokenizer)


# ---- merge-adapters ------------------------------------------------------------------------------

def lora_deltas(peft_model, adapter: str) -> dict[str, "torch.Tensor"]:
    from peft.tuners.lora import LoraLayer

    return {name: module.get_delta_weight(adapter) for name, module in peft_model.named_modules()
            if isinstance(module, LoraLayer) and adapter in module.lora_A}


def test_cat_merge_is_exact_with_different_ranks_and_targets(cli, tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel

    # The first adapter uses rsLoRA: PEFT copies the combined adapter's config from the first input.
    a = make_adapter(tiny_model_dir, tmp_path / "a", r=4, seed=1, use_rslora=True, run={"template": "auto"})
    b = make_adapter(tiny_model_dir, tmp_path / "b", r=8, seed=2, targets=("k_proj", "v_proj", "o_proj"),
                     run={"template": "auto"})
    out = tmp_path / "merged-ab"
    result = cli("merge-adapters", "--model", str(tiny_model_dir), "--adapter", f"a={a}", "--adapter", f"b={b}",
                 "--method", "cat", "--weights", "0.7,1.3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert {"adapter_config.json", "adapter_model.safetensors", "workbench_run.json"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 12 and set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    run = json.loads((out / "workbench_run.json").read_text())
    assert run["merge_method"] == "cat" and [m["weight"] for m in run["merged_from"]] == [0.7, 1.3]

    # Plain PEFT loads it, and its update equals 0.7·ΔW_a + 1.3·ΔW_b exactly (cat is lossless).
    inputs, _ = base_plus_adapters(tiny_model_dir, {"a": a, "b": b})
    merged = PeftModel.from_pretrained(load_plain(tiny_model_dir)[0], str(out))
    delta_a, delta_b, delta_m = lora_deltas(inputs, "a"), lora_deltas(inputs, "b"), lora_deltas(merged, "default")
    assert set(delta_m) == set(delta_a) | set(delta_b)
    for name, delta in delta_m.items():
        expected = 0.7 * delta_a.get(name, 0) + 1.3 * delta_b.get(name, 0)
        torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-5)


def test_merged_adapter_answers_like_both_adapters_at_once_and_loads_in_workbench(cli, tiny_model_dir, tmp_path):
    from workbench.config.model import ModelArgs
    from workbench.models.loader import load_model

    a = make_adapter(tiny_model_dir, tmp_path / "a", r=4, seed=3)
    b = make_adapter(tiny_model_dir, tmp_path / "b", r=4, seed=4, targets=("q_proj", "up_proj"))
    out = tmp_path / "merged"
    result = cli("merge-adapters", "--model", str(tiny_model_dir), "--adapter", str(a), "--adapter", str(b),
                 "--out", str(out))
    assert result.returncode == 0, result.stderr
    both, tokenizer = base_plus_adapters(tiny_model_dir, {"a": a, "b": b})
    only_a, _ = base_plus_adapters(tiny_model_dir, {"a": a})
    expected = logits(both, tokenizer)
    assert max_diff(expected, logits(only_a, tokenizer)) > 0.05

    loaded = load_model(ModelArgs(model_name_or_path=str(tiny_model_dir), infer_dtype="float32"),
                        adapters={"ab": str(out)})
    assert_same_logits(logits(loaded.model, tokenizer), expected)
    assert greedy(loaded.model, tokenizer) == greedy(both, tokenizer)


@pytest.mark.parametrize("method,density", [("linear", None), ("svd", None), ("ties", 0.7), ("dare_linear", None),
                                            ("dare_ties", 0.5)])
def test_every_method_writes_a_loadable_adapter(tiny_model_dir, tmp_path, method, density):
    import torch
    from peft import PeftModel

    from workbench.config.export import MergeAdaptersArgs
    from workbench.config.model import ModelArgs
    from workbench.export.merge import Progress, combine_adapters

    a = make_adapter(tiny_model_dir, tmp_path / "a", r=4, seed=5)
    b = make_adapter(tiny_model_dir, tmp_path / "b", r=4, seed=6)
    opts = MergeAdaptersArgs(method=method, density=density, out=str(tmp_path / "out"), weights="1,0.5")
    record = combine_adapters(ModelArgs(model_name_or_path=str(tiny_model_dir)), {"a": str(a), "b": str(b)}, opts,
                              progress=Progress(5, echo=lambda line: None))
    assert record["r"] == 4 and record["merge_method"] == method
    assert record["density"] == (None if method in ("linear", "svd") else (density or 0.5))
    merged = PeftModel.from_pretrained(load_plain(tiny_model_dir)[0], record["out"])
    deltas = lora_deltas(merged, "default")
    assert deltas and all(torch.isfinite(d).all() and d.abs().sum() > 0 for d in deltas.values())


def test_svd_merge_handles_different_ranks(tiny_model_dir, tmp_path):
    from workbench.config.export import MergeAdaptersArgs
    from workbench.config.model import ModelArgs
    from workbench.export.merge import Progress, combine_adapters

    a = make_adapter(tiny_model_dir, tmp_path / "a", r=2, seed=7)
    b = make_adapter(tiny_model_dir, tmp_path / "b", r=6, seed=8)
    record = combine_adapters(ModelArgs(model_name_or_path=str(tiny_model_dir)), {"a": str(a), "b": str(b)},
                              MergeAdaptersArgs(method="svd", out=str(tmp_path / "svd")),
                              progress=Progress(5, echo=lambda line: None))
    assert record["r"] == 6


# ---- bad input -----------------------------------------------------------------------------------

def test_bad_merge_inputs_are_refused_before_anything_is_written(cli, tiny_model_dir, tiny_adapter, tmp_path):
    other_base = make_tiny_model(tiny_model_dir, tmp_path / "other-base", seed=1)
    foreign = make_adapter(other_base, tmp_path / "foreign", run={})
    r8 = make_adapter(tiny_model_dir, tmp_path / "r8", r=8, seed=9)
    dora = make_adapter(tiny_model_dir, tmp_path / "dora", use_dora=True)
    biased = make_adapter(tiny_model_dir, tmp_path / "biased", lora_bias=True)
    out = tmp_path / "out"
    model = ["--model", str(tiny_model_dir)]
    cases = [
        (["--adapter", str(tiny_adapter), "--adapter", str(foreign)], "trained on different base models"),
        (["--adapter", str(tiny_adapter), "--adapter", f"b={tiny_adapter}", "--weights", "1,2,3"],
         "weights: 3 weight(s) given for 2 adapter(s)"),
        (["--adapter", str(tiny_adapter), "--adapter", f"b={tiny_adapter}", "--weights", "1,x"],
         "weights: weight 2 ('x') is not a number"),
        (["--adapter", str(tiny_adapter), "--adapter", f"b={tiny_adapter}", "--method", "ties", "--density", "1.5"],
         "density: 1.5 is above the maximum 1.0"),
        (["--adapter", str(tiny_adapter), "--adapter", f"b={tiny_adapter}", "--method", "ties", "--density", "0"],
         "density: 0.0 is out of range"),
        (["--adapter", str(tiny_adapter), "--adapter", f"b={tiny_adapter}", "--method", "cat", "--density", "0.5"],
         "density: applies only to ties"),
        (["--adapter", str(tiny_adapter), "--adapter", str(r8), "--method", "linear"],
         "linear needs adapters of equal rank"),
        (["--adapter", str(tiny_adapter)], "needs at least two adapters"),
        (["--adapter", str(tiny_adapter), "--adapter", str(tmp_path / "missing")], "does not exist"),
        (["--adapter", str(tiny_adapter), "--adapter", f"b={tiny_adapter}", "--method", "magic"],
         "method: 'magic' is not one of"),
        (["--adapter", str(dora), "--adapter", str(tiny_adapter)], "uses DoRA, which PEFT's weighted adapter"),
        (["--adapter", str(biased), "--adapter", str(tiny_adapter)], "uses a LoRA bias (lora_bias)"),
    ]
    for args, message in cases:
        result = cli("merge-adapters", *model, *args, "--out", str(out))
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert not out.exists() and leftovers(tmp_path) == []


def test_bad_export_inputs_leave_nothing_half_written(cli, tiny_model_dir, tiny_adapter, tmp_path):
    other_base = make_tiny_model(tiny_model_dir, tmp_path / "other-base", seed=2)
    model = ["--model", str(tiny_model_dir)]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    cases = [
        # Not writable: the parent is a regular file (tests run as root, so permission bits would not stop us).
        (["--adapter", str(tiny_adapter), "--out", str(blocker / "sub" / "merged")], "out: cannot write to"),
        (["--adapter", str(tiny_adapter), "--out", str(blocker)], "exists and is not a directory"),
        (["--adapter", str(tiny_adapter), "--out", str(busy)], "is not empty (notes.txt)"),
        (["--adapter", str(tiny_adapter), "--out", str(busy), "--overwrite"], "not a model or adapter export"),
        (["--adapter", str(tiny_adapter), "--out", str(tiny_adapter / "merged")], "overlaps an input"),
        (["--adapter", str(tiny_adapter), "--out", str(tmp_path / "m"), "--shard-size", "lots"],
         "shard_size: 'lots' is not a size"),
        (["--adapter", str(tiny_adapter), "--out", str(tmp_path / "m"), "--dtype", "int3"], "dtype: 'int3' is not one"),
        (["--out", str(tmp_path / "m")], "give the adapter to merge"),
        # The adapter records another base model of the same shape: the silent mistake this check exists for.
        (["--adapter", str(tiny_adapter), "--out", str(tmp_path / "m"), "--model", str(other_base)],
         f"was trained on {tiny_model_dir}, not on {other_base}"),
    ]
    for args, message in cases:
        result = cli("export", *model, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "m").exists() and not (blocker.parent / "sub").exists()
    assert (busy / "notes.txt").read_text() == "mine" and sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    assert blocker.read_text() == "not a directory" and leftovers(tmp_path) == []


def test_failure_after_loading_removes_the_partial_directory(cli, bundled_model_dir, tiny_adapter, tmp_path):
    """The adapter does not fit this base (other shapes): it fails after the staging directory exists."""
    out = tmp_path / "new" / "deeper" / "merged"
    result = cli("export", "--model", str(bundled_model_dir), "--adapter", str(tiny_adapter), "--out", str(out),
                 "--check_base", "false")
    assert result.returncode == 1 and "does not fit base model" in result.stderr, result.stderr
    assert not (tmp_path / "new").exists()  # the parents it created are gone too


def test_output_dir_rules_unit(tmp_path):
    from workbench.config.base import OptionError
    from workbench.export.merge import StagingDir, check_output

    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output(empty, overwrite=False, inputs=[]) == empty
    with StagingDir(empty, overwrite=False) as staging:
        (staging.path / "config.json").write_text("{}")
        staging.publish()
    assert (empty / "config.json").is_file() and leftovers(tmp_path) == []
    with pytest.raises(OptionError, match="is not empty"):
        check_output(empty, overwrite=False, inputs=[])
    assert check_output(empty, overwrite=True, inputs=[]) == empty  # an earlier export may be replaced
    with pytest.raises(RuntimeError):
        with StagingDir(tmp_path / "x", overwrite=False) as staging:
            (staging.path / "half").write_text("…")
            raise RuntimeError("interrupted")
    assert not (tmp_path / "x").exists() and leftovers(tmp_path) == []


def test_export_options():
    from workbench.config.base import OptionError
    from workbench.config.export import ExportArgs, MergeAdaptersArgs, parse_size

    assert parse_size("2GB") == 2 * 10**9 and parse_size("1GiB") == 2**30 and parse_size("500 mb") == 5 * 10**8
    assert ExportArgs(dtype="bf16").dtype == "bfloat16"
    with pytest.raises(OptionError, match="shard_size.*minimum"):
        ExportArgs(shard_size="10KB")
    assert MergeAdaptersArgs(method="dare_ties").effective_density == 0.5
    assert MergeAdaptersArgs(method="cat").effective_density is None
    assert MergeAdaptersArgs(weights="1, -0.5").weight_list(2) == [1.0, -0.5]
    with pytest.raises(OptionError, match="svd_rank"):
        MergeAdaptersArgs(method="cat", svd_rank=4)


def test_merged_model_answers_with_its_training_template(tiny_model_dir, tmp_path):
    """An adapter trained with a template other than the tokenizer's own (llama2 here): the merged model records
    it, and "auto" then picks it for that model (in chat and evaluation), not the tokenizer's chat template."""
    from workbench.config.export import ExportArgs
    from workbench.config.model import ModelArgs
    from workbench.data.templates import resolve_template
    from workbench.export.merge import Progress, merge_into_model
    from workbench.infer.engine import ChatEngine
    from workbench.models.loader import load_model

    adapter = make_adapter(tiny_model_dir, tmp_path / "llama2-adapter", run={"template": "llama2"})
    out = tmp_path / "merged"
    record = merge_into_model(ModelArgs(model_name_or_path=str(tiny_model_dir)), {"a": str(adapter)},
                              ExportArgs(out=str(out), dtype="fp32"), progress=Progress(7, echo=lambda line: None))
    assert record["template"] == "llama2"
    assert any("'auto' uses 'llama2'" in note for note in record["notes"])  # differs from the tokenizer's own
    template = resolve_template("auto", str(out))
    assert template.name == "llama2"
    loaded = load_model(ModelArgs(model_name_or_path=str(out), device="cpu"))
    assert loaded.template == "llama2"
    engine = ChatEngine(loaded)
    assert engine.template.name == "llama2"
    assert "[INST]" in engine.template.render(loaded.tokenizer, [{"role": "user", "content": "Hi"}])
    # A template chosen by name still wins; a record without a known template changes nothing.
    assert resolve_template("chatml", str(out)).name == "chatml"
    (out / "workbench_export.json").write_text(json.dumps({**record, "template": "auto"}))
    assert resolve_template("auto", str(out)).name == "jinja"


def test_exported_models_are_listed_for_the_pickers(cli, tiny_model_dir, tiny_adapter, wb_home):
    from workbench.export.merge import exports_dir, list_exported_models

    result = cli("export", "--model", str(tiny_model_dir), "--adapter", f"demo={tiny_adapter}",
                 env={"WORKBENCH_HOME": str(wb_home)})
    assert result.returncode == 0, result.stderr
    listed = list_exported_models()
    assert len(listed) == 1 and Path(listed[0]).parent == exports_dir() and Path(listed[0]).name.endswith("-demo")


def test_abort_mid_export_leaves_nothing(bundled_model_dir, tmp_path):
    """A job's abort sends SIGTERM: the export stops and removes its staging directory."""
    import signal
    import subprocess
    import sys
    import time

    adapter = make_adapter(bundled_model_dir, tmp_path / "adapter", r=4, run={"base_model": "smollm2-135m-instruct"})
    out, progress = tmp_path / "merged", tmp_path / "progress.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "export", "--adapter", str(adapter), "--out", str(out),
         "--progress-file", str(progress)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if progress.exists() and len(progress.read_text().splitlines()) >= 2:  # loading the base model
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    assert any(p.name.startswith(".merged.partial-") for p in tmp_path.iterdir())
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert not out.exists() and leftovers(tmp_path) == []


def test_command_argv_round_trips_through_the_cli_parser(tiny_model_dir, tiny_adapter):
    from workbench.cli import build_parser
    from workbench.config.export import MergeAdaptersArgs
    from workbench.export.merge import MERGE
    from workbench.export.cli import _split
    from workbench.export.launch import command_argv

    opts = MergeAdaptersArgs(method="dare_ties", weights="1,0.5", density=0.3, out="/tmp/x", overwrite=True)
    adapters = {"a": str(tiny_adapter), "b": str(tiny_adapter)}
    argv = command_argv(MERGE, str(tiny_model_dir), adapters, opts, progress_file="/tmp/p.jsonl")
    assert argv[1:4] == ["-m", "workbench", MERGE]
    args = build_parser(MERGE).parse_args(argv[3:])
    model_args, parsed_adapters, parsed = _split(args, MergeAdaptersArgs)
    assert parsed == opts and parsed_adapters == adapters and model_args.model_name_or_path == str(tiny_model_dir)
    assert args.progress_file == "/tmp/p.jsonl"
