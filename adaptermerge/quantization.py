"""Re-quantization with bitsandbytes: NF4 (double quantization) or LLM.int8, and what it costs.

Two schemes, both exactly as bitsandbytes stores them when transformers loads a model with a
`BitsAndBytesConfig`:
- "nf4": blockwise 4-bit NormalFloat, one absmax per `blocksize` (64) weights; with double
  quantization the absmaxes are themselves quantized to 8 bits (blocks of 256) around their mean.
- "int8": LLM.int8's row-wise absmax: the weight is cast to float16, each output row scaled by
  127 / max|row| and rounded to int8 (`Int8Params` keeps the int8 rows and the per-row absmax).

`roundtrip(W, scheme)` gives dequant(quant(W)): what the quantized layer multiplies with. The merge
engine uses it for `--merge-onto dequantized`, since a QLoRA adapter learned to correct dequant(NF4(W0)),
not W0. `quantize_model` writes a folder that reloads quantized with `from_pretrained`, and
`quantization_report` measures the cost: per-layer relative error against the full-precision
weights, the KL divergence of next-token distributions on fixed prompts, and the size on disk.

Progress callbacks are called as `progress(stage, done, total)` with stage one of "load",
"layers", "kl", "save".

bitsandbytes and transformers are imported inside the functions that use them: both are heavy
(seconds), and a merge that never quantizes should not pay for them.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Iterable, Mapping

import torch

from .errors import AdapterMergeError
from .fileio import atomic_dir, check_destination, hf_folder, read_json_object, safetensors_weights
from .modelcard import model_card
from .progress import StageProgress
from .validate import quote

log = logging.getLogger(__name__)

SCHEMES = ("nf4", "int8")
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NF4_BLOCKSIZE = 64  # what transformers' bitsandbytes loader uses for every Linear4bit
REPORT_NAME = "adaptermerge.json"

# Fixed prompts for the KL measurement: short, varied (chat, code, arithmetic, facts, lists), so a
# quantization that hurts one kind of text shows. Changing them changes every recorded KL.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Question: What is 17 plus 25?\nAnswer:",
    "Once upon a time, in a small village by the sea, there lived",
    "The three primary colors are red, blue and",
    "Water boils at 100 degrees Celsius at sea level because",
    "Translate to French: Good morning, how are you?\nFrench:",
    "A list of fruits: apple, banana, cherry,",
    "The mitochondria is the powerhouse of the",
    "import numpy as np\nx = np.arange(10)\nprint(x.",
    "Photosynthesis converts sunlight, water and carbon dioxide into",
    "User: Can you recommend a good book about history?\nAssistant:",
    "In 1969, the Apollo 11 mission landed the first humans on",
    "The square root of 144 is",
    "SELECT name, email FROM users WHERE",
    "Dear hiring manager, I am writing to apply for the position of",
)


def check_scheme(scheme: str) -> str:
    """The scheme, lower-cased; AdapterMergeError for anything but nf4 or int8."""
    name = str(scheme).lower()
    if name not in SCHEMES:
        raise AdapterMergeError(f"unknown quantization scheme {scheme!r}: expected one of {', '.join(SCHEMES)}")
    return name


def check_compute_dtype(compute_dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(compute_dtype, torch.dtype) and compute_dtype in COMPUTE_DTYPES.values():
        return compute_dtype
    if compute_dtype in COMPUTE_DTYPES:
        return COMPUTE_DTYPES[compute_dtype]
    raise AdapterMergeError(f"unknown compute dtype {compute_dtype!r}: expected one of {', '.join(COMPUTE_DTYPES)}")


def require_bitsandbytes():
    """The bitsandbytes module, or an AdapterMergeError that says how to install it."""
    try:
        import bitsandbytes
        import bitsandbytes.functional  # noqa: F401
    except ImportError as exc:
        raise AdapterMergeError(
            f"bitsandbytes is needed for quantization and is not usable here ({exc}): pip install bitsandbytes"
        ) from None
    return bitsandbytes


def roundtrip(weight: torch.Tensor, scheme: str, *, blocksize: int = NF4_BLOCKSIZE, double_quant: bool = True) -> torch.Tensor:
    """dequant(quant(weight)) for one weight [out, in], on the weight's device.

    nf4: quantized in the weight's own dtype (pass it in the dtype the model is loaded with: a base
    loaded in bfloat16 for QLoRA training was quantized from bfloat16), returned in that dtype.
    int8: cast to float16 first, as `Int8Params` does; returned in float32, as bitsandbytes
    dequantizes. `blocksize` and `double_quant` apply to nf4 only.
    """
    scheme = check_scheme(scheme)
    require_bitsandbytes()
    import bitsandbytes.functional as bnbf

    if scheme == "nf4":
        packed, state = bnbf.quantize_4bit(weight, blocksize=blocksize, compress_statistics=double_quant, quant_type="nf4")
        return dequantize_nf4(packed, state)
    if weight.dim() != 2:
        raise AdapterMergeError(f"int8 quantization is row-wise and needs a 2-D weight, got shape {tuple(weight.shape)}")
    rows, absmax, _ = bnbf.int8_vectorwise_quant(weight.contiguous().to(torch.float16))
    return bnbf.int8_vectorwise_dequant(rows, absmax)


def dequantize_nf4(packed: torch.Tensor, state) -> torch.Tensor:
    """bitsandbytes' dequantize_4bit, asked for a flat tensor and reshaped.

    bitsandbytes 0.50.2's native CPU kernel dequantizes a 2-D shape wrongly when the row length is
    not a multiple of the block size (e.g. [64, 32]: 40 % relative error instead of 9 %), and
    Linear4bit computes with those wrong weights on CPU. Blocks run over the flattened tensor, so
    asking for the flat shape gives the true NF4 values; for real models (rows a multiple of 64)
    the two agree bit for bit.
    """
    import bitsandbytes.functional as bnbf

    flat_state = copy.copy(state)
    flat_state.shape = torch.Size([state.shape.numel()])
    return bnbf.dequantize_4bit(packed, flat_state).view(state.shape)


def bnb_config(scheme: str, compute_dtype: str | torch.dtype = "float32"):
    """The transformers BitsAndBytesConfig for a scheme: NF4 with double quantization, or LLM.int8."""
    scheme = check_scheme(scheme)
    dtype = check_compute_dtype(compute_dtype)
    require_bitsandbytes()
    from transformers import BitsAndBytesConfig

    if scheme == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def quantized_modules(model) -> dict[str, torch.nn.Module]:
    """{name: module} of the bitsandbytes Linear4bit / Linear8bitLt layers of a loaded model."""
    import bitsandbytes as bnb

    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return {name: module for name, module in model.named_modules() if isinstance(module, kinds)}


def dequantized_weight(module: torch.nn.Module) -> torch.Tensor:
    """The float32 weight [out, in] a bitsandbytes layer computes with (the module is not changed)."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    weight = module.weight
    if isinstance(module, bnb.nn.Linear4bit):
        data, state = weight.data, weight.quant_state
        # On CPUs with AVX512-BF16 the first no-grad forward repacks the weight into a CPU-only
        # layout with bfloat16 absmaxes; bitsandbytes' inverse re-quantizes those, so after a forward
        # the result is close to, not exactly, the saved weight. Measure before running the model.
        if getattr(state, "packing_format_for_cpu", False):
            data, state = bnbf._convert_weight_packed_for_cpu_inverse(data.clone(), state)
        return dequantize_nf4(data, state).float()
    if isinstance(module, bnb.nn.Linear8bitLt):
        if weight.dtype != torch.int8:  # has_fp16_weights: kept in full precision
            return weight.data.float()
        return bnbf.int8_vectorwise_dequant(weight.data, weight.SCB).float()
    raise TypeError(f"{type(module).__name__} is not a bitsandbytes quantized layer")


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """||approx - exact||_F / ||exact||_F in float32 (0 when both are zero)."""
    exact = exact.float()
    diff = (approx.float().to(exact.device) - exact).norm().item()
    norm = exact.norm().item()
    return diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)


def layer_errors(reference, quantized_model, progress: StageProgress | None = None) -> dict[str, float]:
    """{module name: relative error} of each quantized layer against the reference model's weight."""
    modules = quantized_modules(quantized_model)
    errors = {}
    for i, (name, module) in enumerate(modules.items()):
        exact = reference.get_submodule(name).weight.detach()
        errors[name] = relative_error(dequantized_weight(module), exact)
        if progress:
            progress("layers", i + 1, len(modules))
    return errors


@torch.no_grad()
def next_token_kl(reference, quantized_model, tokenizer, prompts=DEFAULT_PROMPTS, progress: StageProgress | None = None) -> dict:
    """KL(reference || quantized) of next-token distributions at every position of every prompt.

    Returns {"mean", "max", "prompts", "tokens"}; the mean is over all positions of all prompts.
    Prompts run one at a time, so no padding enters the distributions.
    """
    total, worst, count = 0.0, 0.0, 0
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        p_log = torch.log_softmax(reference(ids.to(reference.device)).logits[0].float(), dim=-1)
        q_log = torch.log_softmax(quantized_model(ids.to(quantized_model.device)).logits[0].float(), dim=-1)
        kl = (p_log.exp() * (p_log - q_log.to(p_log.device))).sum(dim=-1).clamp_min(0)  # [positions]
        total += kl.sum().item()
        worst = max(worst, kl.max().item())
        count += kl.numel()
        if progress:
            progress("kl", i + 1, len(prompts))
    return {"mean": total / max(count, 1), "max": worst, "prompts": len(prompts), "tokens": count}


def weights_size(folder: str | Path) -> int:
    """Bytes of the safetensors weight files a model folder loads from."""
    return sum(p.stat().st_size for p in safetensors_weights(folder, "model folder"))


def check_full_precision(model_dir: str | Path) -> dict:
    """The config of a full-precision model folder; AdapterMergeError naming what is wrong otherwise."""
    path = Path(model_dir)
    # Regular files only, and the weights transformers will read are model.safetensors or its
    # index's shards: a pytorch_model.bin beside a decoy .safetensors is never loaded.
    hf_folder(path, "model folder")
    config_file = path / "config.json"
    config = read_json_object(config_file, "model config")
    quant = config.get("quantization_config")
    if quant is not None and not isinstance(quant, dict):
        raise AdapterMergeError(f"{config_file}: \"quantization_config\" must be an object, got {quote(quant)}")
    if quant:
        method = quant.get("quant_method", "unknown")
        raise AdapterMergeError(
            f"model folder {path} is already quantized ({method}, quantization_config in config.json): "
            "quantize the full-precision model instead"
        )
    return config


def check_device(device: str) -> str:
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise AdapterMergeError(f"device {device!r} was asked for but CUDA is not available here")
    if not (str(device) == "cpu" or str(device).startswith("cuda")):
        raise AdapterMergeError(f"unknown device {device!r}: expected cpu or cuda[:N]")
    return str(device)


def load_reference(model_dir: str | Path, device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    hf_folder(model_dir, "model folder")
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True).to(device).eval()


def load_tokenizer_or_none(model_dir: str | Path):
    """The folder's tokenizer, or None (the KL is then left out of the report)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        log.warning("no tokenizer in %s (%s): the report will have no KL", model_dir, exc)
        return None


def quantization_report(
    reference, quantized_model, tokenizer=None, prompts=DEFAULT_PROMPTS, progress: StageProgress | None = None
) -> dict:
    """What quantizing cost: per-layer relative error and next-token KL against the reference.

    reference: a full-precision model, or the folder it loads from (float32, on the quantized
    model's device). tokenizer None leaves the KL out. Layer errors are measured before any
    forward pass, while the bitsandbytes weights are in their portable layout.
    """
    if isinstance(reference, (str, os.PathLike)):
        reference = load_reference(reference, str(quantized_model.device))
    errors = layer_errors(reference, quantized_model, progress)
    if not errors:
        raise AdapterMergeError("the quantized model has no bitsandbytes layers: nothing was quantized")
    values = sorted(errors.values())
    report = {
        "layers": errors,
        "mean_layer_error": sum(values) / len(values),
        "median_layer_error": values[len(values) // 2],
        "max_layer_error": values[-1],
        "quantized_layers": len(values),
        "kl": None,
    }
    if tokenizer is not None:
        report["kl"] = next_token_kl(reference, quantized_model, tokenizer, tuple(prompts or DEFAULT_PROMPTS), progress)
    return report


def write_report(folder: str | Path, quantization: dict, previous: str | Path | None = None) -> dict:
    """Write `folder/adaptermerge.json`: the previous one (the input folder's, if any) plus a "quantization" key."""
    data: dict = {}
    if previous is not None and Path(previous).is_file():
        data = read_json_object(previous)
    data["quantization"] = quantization
    (Path(folder) / REPORT_NAME).write_text(json.dumps(data, indent=2) + "\n")
    return data


def quantize_model(
    model_dir: str | Path,
    out_dir: str | Path,
    scheme: str = "nf4",
    *,
    compute_dtype: str = "float32",
    device: str = "cpu",
    force: bool = False,
    prompts=None,
    progress: StageProgress | None = None,
    source: str | None = None,
    inputs: Iterable[str | Path] = (),
) -> dict:
    """Quantize a full-precision model folder into `out_dir`, which reloads quantized with from_pretrained.

    Non-quantized parameters (embeddings, norms, an untied lm_head) are kept in `compute_dtype`.
    Writes a temp folder beside out_dir and moves it in place at the end, so a failure leaves
    nothing behind. Returns the "quantization" entry written into out_dir/adaptermerge.json.
    `source` is what the report names as the input (default: model_dir), for a caller that
    quantizes a temporary folder, e.g. a merge written just before; `inputs` are further files and
    folders out_dir may not overwrite (that merge's adapters and base), beside model_dir itself.
    """
    scheme = check_scheme(scheme)
    dtype = check_compute_dtype(compute_dtype)
    device = check_device(device)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_full_precision(model_dir)
    require_bitsandbytes()
    inputs = (model_dir, *inputs)
    check_destination(out_dir, force, inputs)  # before the slow load

    from transformers import AutoModelForCausalLM

    import bitsandbytes

    start = time.perf_counter()
    if progress:
        progress("load", 0, 1)
    quantized = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=bnb_config(scheme, dtype), dtype=dtype, device_map={"": device},
        use_safetensors=True,  # never fall back to a pickle
    ).eval()
    tokenizer = load_tokenizer_or_none(model_dir)
    if progress:
        progress("load", 1, 1)

    with atomic_dir(out_dir, force=force, inputs=inputs) as tmp:
        # Save first: the save is what the user asked for; measuring comes after and is timed apart.
        if progress:
            progress("save", 0, 1)
        quantized.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        seconds = time.perf_counter() - start
        if progress:
            progress("save", 1, 1)

        measure_start = time.perf_counter()
        reference = load_reference(model_dir, device)
        report = quantization_report(reference, quantized, tokenizer, prompts or DEFAULT_PROMPTS, progress)
        entry = {
            "scheme": scheme,
            "double_quant": scheme == "nf4",
            "blocksize": NF4_BLOCKSIZE if scheme == "nf4" else None,
            "compute_dtype": str(dtype).removeprefix("torch."),
            "source": source or str(model_dir),
            "device": device,
            "bitsandbytes": bitsandbytes.__version__,
            "seconds_quantize_and_save": seconds,
            "seconds_measure": time.perf_counter() - measure_start,
            "size_bytes": {"before": weights_size(model_dir), "after": weights_size(tmp)},
            **report,
        }
        data = write_report(tmp, entry, previous=model_dir / REPORT_NAME)
        # A merge's card gains a quantization section; a model only quantized names its source.
        card = {"output": "model", **data}
        card.setdefault("base_model", entry["source"])
        (tmp / "README.md").write_text(model_card(card))
    return entry


def worst_layers(errors: Mapping[str, float], n: int = 5) -> list[tuple[str, float]]:
    """The n layers with the largest relative error, largest first."""
    return sorted(errors.items(), key=lambda item: item[1], reverse=True)[:n]
