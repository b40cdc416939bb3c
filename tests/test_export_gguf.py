"""GGUF export: merged models (Llama, Qwen2) read back by transformers' GGUF loader (``gguf_file=``) answer like
the merged safetensors model; the tensor types of f16/bf16/q8_0; a LoRA adapter alone in llama.cpp's GGUF LoRA
format, rebuilt by llama.cpp's formula, answers like base + adapter; and everything it cannot write is refused
before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import TOKENIZER_FILES
from test_export import PROMPTS, assert_same_logits, base_plus_adapters, greedy, leftovers, load_plain, logits, \
    make_adapter, max_diff


def load_gguf(path: Path):
    """A GGUF file read back by transformers (weights dequantized to float32, tokenizer rebuilt from the file)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def reader(path: Path):
    import gguf

    return gguf.GGUFReader(str(path))


def metadata(path: Path) -> dict:
    from workbench.export.gguf import read_metadata

    return read_metadata(path)


def tensor_types(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in reader(path).tensors}


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=True, return_dict=True)["input_ids"]


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("gguf-adapters") / "a", r=4,
                        targets=("q_proj", "k_proj", "v_proj", "o_proj", "up_proj"), run={})


def make_tiny_qwen2(bundled_dir: Path, out: Path) -> Path:
    """A random Qwen2 (q/k/v biases, untied output layer) whose tokenizer splits text with Qwen2's rule."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    base = AutoConfig.from_pretrained(bundled_dir)
    config = AutoConfig.for_model("qwen2", vocab_size=base.vocab_size, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=2048, tie_word_embeddings=False, rope_theta=1000000.0,
                                  bos_token_id=base.bos_token_id, eos_token_id=base.eos_token_id,
                                  pad_token_id=base.pad_token_id)
    torch.manual_seed(11)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # initialised biases are zero: make them count
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0, 0.5)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (bundled_dir / name).is_file():
            shutil.copy(bundled_dir / name, out / name)
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": PRETOKENIZE_REGEX}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
    (out / "tokenizer.json").write_text(json.dumps(tokenizer))
    return out


def make_tiny_mistral(out: Path, work: Path) -> Path:
    """A random Mistral with a small SentencePiece BPE tokenizer (byte fallback, like Llama 2 / Mistral's), trained
    here on the demo data; its directory holds tokenizer.model as the original models do."""
    import sentencepiece
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from helpers import REPO_ROOT

    texts = []
    for name in ("identity.json", "demo_qa.json", "demo_summarization.json"):
        for record in json.loads((REPO_ROOT / "data" / name).read_text(encoding="utf-8"))[:200]:
            texts.extend(str(v) for v in record.values() if isinstance(v, str))
    work.mkdir(parents=True, exist_ok=True)
    (work / "corpus.txt").write_text("\n".join(texts), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(work / "corpus.txt"), model_prefix=str(work / "spm"), vocab_size=600, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, split_digits=True,
        minloglevel=2)
    source = work / "source"
    source.mkdir()
    shutil.copy(work / "spm.model", source / "tokenizer.model")
    (source / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True,
        "chat_template": "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"}))
    config = AutoConfig.for_model("mistral", vocab_size=600, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=512, tie_word_embeddings=False, sliding_window=None,
                                  bos_token_id=1, eos_token_id=2)
    torch.manual_seed(5)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)  # transformers 5 writes tokenizer.json only
    shutil.copy(source / "tokenizer.model", out / "tokenizer.model")
    return out


# ---- merged models -------------------------------------------------------------------------------

def test_llama_with_adapter_round_trips_exactly_through_gguf(cli, tiny_model_dir, tiny_adapter, tmp_path):
    """f32: the GGUF read back by transformers gives the merged model's logits (q/k permutation, names, tokenizer)."""
    out = tmp_path / "tiny.gguf"
    progress = tmp_path / "progress.jsonl"
    result = cli("export", "--model", str(tiny_model_dir), "--adapter", str(tiny_adapter), "--format", "gguf",
                 "--quant", "f32", "--out", str(out), "--progress-file", str(progress))
    assert result.returncode == 0, result.stderr
    assert f"GGUF model saved to {out}" in result.stdout and "llama-cli -m" in result.stdout
    assert leftovers(tmp_path) == []
    steps = [json.loads(line) for line in progress.read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 8))

    meta = metadata(out)
    assert meta["general.architecture"] == "llama" and meta["general.type"] == "model"
    assert meta["general.file_type"] == 0  # ALL_F32
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.eos_token_id"] == 2 and meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.chat_template"].startswith("{% for message in messages %}")
    assert meta["llama.block_count"] == 2 and meta["llama.attention.head_count_kv"] == 2
    names = set(tensor_types(out))
    assert "output.weight" not in names and {"token_embd.weight", "blk.1.attn_q.weight", "output_norm.weight"} <= names

    with_adapter, tokenizer = base_plus_adapters(tiny_model_dir, {"a": tiny_adapter})
    base, _ = load_plain(tiny_model_dir)
    expected = logits(with_adapter, tokenizer)
    assert max_diff(expected, logits(base, tokenizer)) > 0.05  # the adapter matters
    model, gguf_tokenizer = load_gguf(out)
    assert all(prompt_ids(gguf_tokenizer, p) == prompt_ids(tokenizer, p) for p in PROMPTS)
    assert_same_logits(logits(model, tokenizer), expected)
    assert greedy(model, gguf_tokenizer) == greedy(with_adapter, tokenizer)


def test_qwen2_round_trips_with_biases_untied_head_and_its_split_rule(cli, bundled_model_dir, tmp_path):
    qwen = make_tiny_qwen2(bundled_model_dir, tmp_path / "qwen2")
    out = tmp_path / "exports" / "qwen2.gguf"  # parent directories are created
    result = cli("export", "--model", str(qwen), "--format", "gguf", "--quant", "f32", "--out", str(out))
    assert result.returncode == 0, result.stderr  # no adapter: the base model itself
    meta = metadata(out)
    assert meta["general.architecture"] == "qwen2" and meta["tokenizer.ggml.pre"] == "qwen2"
    types = tensor_types(out)
    assert types["output.weight"] == "F32" and types["blk.0.attn_q.bias"] == "F32"

    original, tokenizer = load_plain(qwen)
    model, gguf_tokenizer = load_gguf(out)
    text = "Hello world! 12345 don't   stop\n\tnow, 3.14159 ünïcödé"
    assert gguf_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert_same_logits(logits(model, tokenizer), logits(original, tokenizer))


def test_mistral_with_a_sentencepiece_tokenizer_round_trips(cli, tmp_path):
    mistral = make_tiny_mistral(tmp_path / "tiny-mistral", tmp_path / "spm")
    adapter = make_adapter(mistral, tmp_path / "adapter", r=4, run={})
    out = tmp_path / "tiny-mistral.gguf"
    result = cli("export", "--model", str(mistral), "--adapter", str(adapter), "--format", "gguf", "--quant", "f32",
                 "--out", str(out))
    assert result.returncode == 0, result.stderr
    meta = metadata(out)
    assert meta["general.architecture"] == "llama"  # llama.cpp runs Mistral as llama
    assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.ggml.scores"] == 600 and meta["tokenizer.chat_template"].startswith("{% for m in")

    with_adapter, tokenizer = base_plus_adapters(mistral, {"a": adapter})
    model, gguf_tokenizer = load_gguf(out)
    for text in ("Hello world 123, the capital of France!", "  two spaces\nand a newline: ünïcödé 你好"):
        assert gguf_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    ids = tokenizer("Who are you?", return_tensors="pt")
    import torch

    with torch.no_grad():
        torch.testing.assert_close(model(**ids).logits, with_adapter(**ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.integration
def test_bundled_model_with_adapter_answers_like_the_merged_safetensors_model(cli, bundled_model_dir, tmp_path):
    """The issue's check: the bundled model + an adapter, as GGUF (f16) read back by transformers, gives the same
    greedy answers as the same merge saved as safetensors."""
    adapter = make_adapter(bundled_model_dir, tmp_path / "adapter", r=8,
                           targets=("q_proj", "k_proj", "v_proj", "o_proj"),
                           run={"base_model": "smollm2-135m-instruct"})
    merged_dir, gguf_file = tmp_path / "merged", tmp_path / "merged.gguf"
    for extra in (["--out", str(merged_dir)], ["--out", str(gguf_file), "--format", "gguf"]):
        result = cli("export", "--model", "smollm2-135m-instruct", "--adapter", str(adapter), "--dtype", "float32",
                     *extra)
        assert result.returncode == 0, result.stderr
    assert tensor_types(gguf_file)["blk.0.attn_q.weight"] == "F16"

    merged, tokenizer = load_plain(merged_dir)
    model, gguf_tokenizer = load_gguf(gguf_file)
    base, _ = load_plain(bundled_model_dir)
    expected = greedy(merged, tokenizer, max_new_tokens=16)
    assert expected != greedy(base, tokenizer, max_new_tokens=16)
    answers = greedy(model, gguf_tokenizer, max_new_tokens=16)
    for prompt, mine, theirs in zip(PROMPTS, answers, expected):  # shown with -s, quoted in the issue note
        print(f"{prompt!r}: gguf {gguf_tokenizer.decode(mine)!r} | safetensors {tokenizer.decode(theirs)!r}")
    assert answers == expected
    assert all(prompt_ids(gguf_tokenizer, p) == prompt_ids(tokenizer, p) for p in PROMPTS)


@pytest.mark.parametrize("quant,two_d,file_type", [("f16", "F16", 1), ("bf16", "BF16", 32), ("q8_0", "Q8_0", 7)])
def test_quant_types_keep_norms_f32_and_stay_close_to_the_weights(tiny_model_dir, tmp_path, quant, two_d, file_type):
    import gguf
    import numpy as np
    from safetensors import safe_open

    from workbench.config.export import ExportArgs
    from workbench.config.model import ModelArgs
    from workbench.export.merge import Progress, merge_into_model

    out = tmp_path / f"tiny-{quant}.gguf"
    record = merge_into_model(ModelArgs(model_name_or_path=str(tiny_model_dir)), {},
                              ExportArgs(format="gguf", quant=quant, out=str(out)),
                              progress=Progress(5, echo=lambda line: None))
    assert record["kind"] == "gguf_model" and record["quant"] == quant and record["out"] == str(out)
    assert metadata(out)["general.file_type"] == file_type
    tensors = {t.name: t for t in reader(out).tensors}
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    assert tensors["blk.0.ffn_down.weight"].tensor_type.name == two_d
    with safe_open(str(tiny_model_dir / "model.safetensors"), framework="np") as f:
        original = f.get_tensor("model.layers.0.mlp.down_proj.weight")
    stored = tensors["blk.0.ffn_down.weight"]
    values = gguf.quants.dequantize(stored.data, stored.tensor_type).reshape(original.shape)
    tolerance = {"f16": 1e-3, "bf16": 1e-2, "q8_0": 2e-2}[quant] * float(np.abs(original).max())
    assert float(np.abs(values - original).max()) < tolerance


def test_tensor_types_follow_llama_cpp_rules():
    from workbench.export.gguf import tensor_type

    assert tensor_type("blk.0.attn_norm.weight", (64,), "q8_0").name == "F32"
    assert tensor_type("blk.0.attn_q.bias", (64,), "f16").name == "F32"
    assert tensor_type("blk.0.ffn_up.weight", (128, 64), "q8_0").name == "Q8_0"
    assert tensor_type("blk.0.ffn_up.weight", (128, 40), "q8_0").name == "F16"  # rows not in blocks of 32
    assert tensor_type("token_embd.weight", (10, 64), "bf16").name == "BF16"


def test_llama_permutation_is_what_transformers_gguf_loader_undoes():
    import numpy as np
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from workbench.export.gguf import permute_rows

    weights = np.arange(24 * 6, dtype=np.float32).reshape(24, 6)  # 6 heads of 4 rows (or 3 kv heads of 8)
    for heads, kv_heads, name in ((6, 6, "blk.0.attn_q.weight"), (6, 3, "blk.0.attn_k.weight")):
        processor = LlamaTensorProcessor(config={"num_attention_heads": heads, "num_key_value_heads": kv_heads})
        n = heads if "attn_q" in name else kv_heads
        back = processor.process(permute_rows(weights, n), name).weights
        assert np.array_equal(back, weights)
        assert not np.array_equal(permute_rows(weights, n), weights)


# ---- the adapter alone ---------------------------------------------------------------------------

def rebuild_from_lora_gguf(base_dir: Path, lora_file: Path):
    """The base model with each W + alpha / r · B·A added, as llama.cpp applies a GGUF LoRA (in its q/k layout)."""
    import gguf
    import torch
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    model, _ = load_plain(base_dir)
    config = model.config
    file = reader(lora_file)
    alpha = float(file.fields["adapter.lora.alpha"].contents())
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    gguf_to_hf = {name_map.get_name(n, try_suffixes=(".weight",)): n for n, _ in model.named_parameters()}
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in file.tensors}
    processor = LlamaTensorProcessor(config={"num_attention_heads": config.num_attention_heads,
                                             "num_key_value_heads": config.num_key_value_heads})
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in [n for n in tensors if n.endswith(".lora_a")]:
            base_name = name[: -len(".lora_a")]
            a, b = tensors[name], tensors[base_name + ".lora_b"]
            delta = (alpha / a.shape[0]) * (b.reshape(-1, a.shape[0]) @ a.reshape(a.shape[0], -1))
            delta = processor.process(delta, base_name).weights  # llama.cpp's q/k row order → transformers'
            params[gguf_to_hf[base_name]] += torch.from_numpy(delta.copy())
    return model


@pytest.mark.parametrize("kind", ["plain", "rslora_and_patterns"])
def test_lora_adapter_alone_rebuilds_base_plus_adapter(cli, tiny_model_dir, tmp_path, kind):
    extra = {} if kind == "plain" else {"use_rslora": True, "rank_pattern": {"v_proj": 2},
                                        "alpha_pattern": {"q_proj": 24}}
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", r=4, run={},
                           targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"), **extra)
    out = tmp_path / "adapter.gguf"
    result = cli("export", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--format", "gguf",
                 "--adapter_only", "--quant", "f32", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"GGUF LoRA adapter saved to {out}" in result.stdout and "--lora" in result.stdout
    meta = metadata(out)
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["adapter.lora.alpha"] == 8.0 and meta["general.architecture"] == "llama"
    names = set(tensor_types(out))
    assert {"blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b", "blk.1.ffn_gate.weight.lora_b"} <= names
    assert len(names) == 2 * 5 * 2 and not any("token_embd" in n for n in names)
    assert ("folded into lora_b" in result.stdout) == (kind != "plain")

    with_adapter, tokenizer = base_plus_adapters(tiny_model_dir, {"a": adapter})
    expected = logits(with_adapter, tokenizer)
    assert_same_logits(logits(rebuild_from_lora_gguf(tiny_model_dir, out), tokenizer), expected)


def test_lora_adapter_refusals(cli, tiny_model_dir, tiny_adapter, tmp_path):
    dora = make_adapter(tiny_model_dir, tmp_path / "dora", r=4, run={}, use_dora=True)
    full = make_adapter(tiny_model_dir, tmp_path / "full", r=4, run={}, modules_to_save=["lm_head"])
    cases = [
        ([str(dora)], "DoRA"),
        ([str(full)], "modules_to_save"),
        ([str(tiny_adapter), str(dora)], "one adapter per GGUF file"),
    ]
    for adapters, words in cases:
        argv = [a for path in adapters for a in ("--adapter", path)]
        result = cli("export", "--model", str(tiny_model_dir), *argv, "--format", "gguf", "--adapter_only",
                     "--out", str(tmp_path / "x.gguf"))
        assert result.returncode == 1 and words in result.stderr, (words, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.gguf").exists() and leftovers(tmp_path) == []


# ---- refusals ------------------------------------------------------------------------------------

def test_an_architecture_it_cannot_write_is_refused_clearly(cli, bundled_model_dir, tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    gpt2 = tmp_path / "gpt2"
    config = AutoConfig.for_model("gpt2", n_layer=1, n_embd=32, n_head=2, vocab_size=49152, bos_token_id=1,
                                 eos_token_id=2)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(gpt2)
    for name in TOKENIZER_FILES:
        if (bundled_model_dir / name).is_file():
            shutil.copy(bundled_model_dir / name, gpt2 / name)
    out = tmp_path / "gpt2.gguf"
    result = cli("export", "--model", str(gpt2), "--format", "gguf", "--out", str(out))
    assert result.returncode == 1
    assert "GGUF export writes Llama, Mistral and Qwen2 models" in result.stderr
    assert "GPT2LMHeadModel" in result.stderr and "convert_hf_to_gguf.py" in result.stderr
    assert not out.exists() and leftovers(tmp_path) == []


def test_rope_scaling_it_cannot_write_is_refused():
    from workbench.config.base import WorkbenchError
    from workbench.export.gguf import check_model_config

    config = {"architectures": ["LlamaForCausalLM"], "rope_parameters": {"rope_type": "dynamic", "factor": 2.0,
                                                                         "rope_theta": 10000.0}}
    with pytest.raises(WorkbenchError, match="RoPE scaling 'dynamic'"):
        check_model_config(config)
    assert check_model_config({**config, "rope_parameters": {"rope_type": "linear", "factor": 2.0}}).name == "llama"
    assert check_model_config({"model_type": "mistral"}).name == "llama"  # llama.cpp runs Mistral as llama
    assert check_model_config({"architectures": ["Qwen2ForCausalLM"]}).name == "qwen2"
    with pytest.raises(WorkbenchError, match="llama3"):
        check_model_config({"architectures": ["Qwen2ForCausalLM"], "rope_parameters": {"rope_type": "llama3"}})


def test_output_file_rules(cli, tiny_model_dir, tmp_path):
    existing = tmp_path / "taken.gguf"
    existing.write_text("not a gguf file")
    cases = [
        (["--out", str(tmp_path / "model")], "give a path ending in .gguf"),
        (["--out", str(existing)], "already exists"),
        (["--out", str(existing), "--overwrite"], "is not a GGUF file"),
        (["--out", str(tiny_model_dir / "inside.gguf")], "lies inside an input"),
        (["--shard-size", "1GB", "--out", str(tmp_path / "a.gguf")], "a GGUF export is one file"),
    ]
    for argv, words in cases:
        result = cli("export", "--model", str(tiny_model_dir), "--format", "gguf", *argv)
        assert result.returncode == 1 and words in result.stderr, (argv, result.stderr)
    assert existing.read_text() == "not a gguf file"
    assert not (tiny_model_dir / "inside.gguf").exists()


def test_gguf_options_apply_to_gguf_only():
    from workbench.config.base import OptionError
    from workbench.config.export import ExportArgs

    for kwargs, option in [({"quant": "q8_0"}, "quant"), ({"adapter_only": True}, "adapter_only"),
                           ({"format": "gguf", "adapter_only": True, "dtype": "bf16"}, "dtype"),
                           ({"format": "gguf", "out": "model.bin"}, "out")]:
        with pytest.raises(OptionError) as err:
            ExportArgs(**kwargs)
        assert err.value.option == option
    assert ExportArgs(format="gguf", quant="q8_0", out="m.GGUF").quant == "q8_0"


def test_overwrite_replaces_an_earlier_gguf_and_the_default_name(cli, tiny_model_dir, wb_home, tmp_path):
    first = cli("export", "--model", str(tiny_model_dir), "--format", "gguf", "--quant", "q8_0")
    assert first.returncode == 0, first.stderr
    path = wb_home / "exports" / f"{tiny_model_dir.name}-q8_0.gguf"
    assert path.is_file() and metadata(path)["general.file_type"] == 7
    again = cli("export", "--model", str(tiny_model_dir), "--format", "gguf", "--quant", "q8_0", "--out", str(path),
                "--overwrite")
    assert again.returncode == 0, again.stderr
    from workbench.export.merge import list_exported_models

    assert list_exported_models() == []  # a GGUF file is not offered to the model pickers (Workbench loads safetensors)


# ---- the Export tab's request and the job command -------------------------------------------------

def test_export_tab_builds_the_gguf_command(tiny_model_dir, tiny_adapter, wb_home):
    from workbench.config.base import OptionError
    from workbench.export.launch import command_argv, preflight
    from workbench.ui import export_tab

    values = {"format": "gguf", "quant": "q8_0", "adapter_only": False, "dtype": "auto", "shard_size": "500MB",
              "out": "", "overwrite": False, "check_base": True}
    command, model, adapters, opts = export_tab._request("export", str(tiny_model_dir), [str(tiny_adapter)], values)
    assert opts.format == "gguf" and opts.shard_size == "2GB"  # hidden for gguf: back to its default
    argv = command_argv(command, model, adapters, opts)
    assert argv[argv.index("--format") + 1] == "gguf" and argv[argv.index("--quant") + 1] == "q8_0"
    out = preflight(command, model, adapters, opts)
    assert out.parent == wb_home / "exports" and out.name.endswith("-q8_0.gguf")
    # Safetensors: the GGUF-only options are hidden, and keep their defaults.
    _, _, _, plain = export_tab._request("export", str(tiny_model_dir), [str(tiny_adapter)],
                                         {**values, "format": "safetensors", "adapter_only": True})
    assert plain.quant == "f16" and not plain.adapter_only and plain.shard_size == "500MB"
    with pytest.raises(OptionError, match="one adapter"):
        preflight("export", model, {"a": str(tiny_adapter), "b": str(tiny_adapter)},
                  export_tab._request("export", model, [], {**values, "adapter_only": True})[3])
    assert "--lora" in export_tab.finished_text("gguf_lora", "/x/a.gguf")
    assert "llama-cli -m /x/m.gguf" in export_tab.finished_text("gguf", "/x/m.gguf")
