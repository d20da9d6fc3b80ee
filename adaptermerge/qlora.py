"""QLoRA-aware merging: which base weights a merged delta is added onto.

An adapter trained with QLoRA saw the base through bitsandbytes: every Linear of the decoder blocks
was NF4-quantized, and the adapter learned to correct dequant(NF4(W0)), not W0. `--merge-onto`
chooses between the two:

- "original": W0 + delta, the full-precision base (right for adapters trained on it);
- "dequantized": dequant(NF4(W0)) + delta for the adapter's targets, and dequant(NF4(W0)) for every
  other Linear bitsandbytes would have quantized, so the merged model computes what the trained
  PEFT model computed. Embeddings, norms and lm_head were never quantized and stay as they are.

The default reads each adapter's training.json (written by the trainer beside adapter_config.json):
when every adapter was trained against a quantized base it is QLORA_DEFAULT for a full-precision
output and QLORA_REQUANTIZED_DEFAULT when the output is re-quantized, "original" otherwise.
Measured (README, "QLoRA adapters: which base to merge onto"): in full precision, dequantized
reproduces the trained model (next-token KL <= 0.002 on the demo adapters, against 0.21-1.19 for
original); re-quantized, dequant(NF4(W0)) + delta goes through a second rounding and lands further
away (0.87-2.39) than NF4(W0 + delta) (0.08-0.60).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .errors import AdapterMergeError
from .fileio import read_json_object
from .quantization import check_scheme, require_bitsandbytes, roundtrip

log = logging.getLogger(__name__)

MERGE_ONTO = ("original", "dequantized")
# Measured (README, "QLoRA adapters: which base to merge onto"); see the module docstring.
QLORA_DEFAULT = "dequantized"
QLORA_REQUANTIZED_DEFAULT = "original"
TRAINING_FILE = "training.json"


def check_merge_onto(value: str | None) -> str | None:
    """None (auto), "original" or "dequantized"; AdapterMergeError otherwise."""
    if value is None or value == "auto":
        return None
    name = str(value).lower()
    if name not in MERGE_ONTO:
        raise AdapterMergeError(f"--merge-onto {value!r}: expected one of {', '.join(MERGE_ONTO)} (or leave it out for the default)")
    return name


def training_quantization(adapter) -> str | None:
    """The quantization the adapter was trained against, from its training.json (None if absent)."""
    source = getattr(adapter, "source", None)
    if source is None:
        return None
    source = Path(source)
    path = (source if source.is_dir() else source.parent) / TRAINING_FILE
    if not path.is_file():
        return None
    quantization = read_json_object(path).get("quantization")
    return str(quantization).lower() if quantization else None


def choose_merge_onto(adapters, merge_onto: str | None, requantize: str | None = None) -> dict:
    """{"merge_onto", "scheme", "reason", "trained_quantization"}: the choice and why.

    requantize: the output's quantization scheme, if any (it changes the QLoRA default).
    scheme is what dequantized rounds through: the quantization the adapters recorded, else nf4.
    """
    asked = check_merge_onto(merge_onto)
    recorded = {a.name: training_quantization(a) for a in adapters}
    quantized = {q for q in recorded.values() if q}
    scheme = quantized.pop() if len(quantized) == 1 else "nf4"
    if scheme not in ("nf4", "int8"):
        scheme = "nf4"
    if asked is not None:
        choice, reason = asked, "asked for with --merge-onto"
    elif recorded and all(recorded.values()):
        choice = QLORA_REQUANTIZED_DEFAULT if requantize else QLORA_DEFAULT
        output = "a re-quantized" if requantize else "a full-precision"
        reason = f"default for adapters trained against a quantized base ({scheme}, from {TRAINING_FILE}) and {output} output"
    else:
        choice = "original"
        reason = "default: not every adapter records a quantized base in training.json" if any(recorded.values()) else "default: no adapter records QLoRA training"
    return {"merge_onto": choice, "scheme": scheme if choice == "dequantized" else None, "reason": reason, "trained_quantization": recorded}


def quantizable_modules(folder: str | Path) -> set[str]:
    """Names of the Linear modules bitsandbytes quantizes when the model loads with a BitsAndBytesConfig.

    transformers converts every nn.Linear except the output embedding (lm_head, which is also what
    tied embeddings point at); built on the meta device, so nothing is allocated.
    """
    from transformers import AutoConfig, AutoModelForCausalLM  # heavy: only when merging onto dequant(NF4(W0))

    config = AutoConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    skip = set()
    output = model.get_output_embeddings()
    for name, module in model.named_modules():
        if module is output:
            skip.add(name)
    return {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and name not in skip}


class DequantizedBase:
    """A BaseWeights transform: dequant(quant(W)) for the quantizable modules, W for the rest.

    Weights are rounded through the scheme in float32, as the trainer loads the base in float32
    before bitsandbytes quantizes it, and returned in their stored dtype.
    """

    def __init__(self, folder: str | Path, scheme: str = "nf4"):
        self.scheme = check_scheme(scheme)
        require_bitsandbytes()
        self.modules = quantizable_modules(folder)

    def __call__(self, module: str, weight: torch.Tensor) -> torch.Tensor:
        if module not in self.modules:
            return weight
        return roundtrip(weight.float(), self.scheme).float().to(weight.dtype)


def apply_merge_onto(plan, merge_onto: str | None, requantize: str | None = None) -> dict:
    """Set the plan's base transform for the chosen merge-onto; returns the record for adaptermerge.json."""
    choice = choose_merge_onto(plan.adapters, merge_onto, requantize)
    if choice["merge_onto"] == "dequantized":
        transform = DequantizedBase(plan.base_weights.folder, choice["scheme"])
        missing = sorted(m for m in transform.modules if f"{m}.weight" not in plan.base_weights.location)
        if missing:
            raise AdapterMergeError(f"base model {plan.base_weights.folder}: no weight for quantizable module {missing[0]}")
        plan.base_weights.transform = transform
        choice["quantizable_modules"] = len(transform.modules)
    log.info("merge onto %s (%s)", choice["merge_onto"], choice["reason"])
    return choice
