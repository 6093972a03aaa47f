"""LoRA through PEFT (`--lora-rank`): low-rank adapters on the decoder, the frozen base as
the KL reference.

    python train.py --lora-rank 64 --lora-alpha 128    # T-GRPO with adapters (built-in run)
    python train.py --model runs/sft/final --data ... --lora-rank 64 --activation-checkpointing
                                          # the paper's 7B T-GRPO on one 80 GB GPU (plan.py, README)
    python sft.py --lora-rank 64                       # the SFT cold start with adapters

What is trained: PEFT's LoRA layers on the decoder's attention and MLP projections
(`--lora-targets auto`, `decoder_targets`: the Linears of the model's own decoder layers, read from
the model -- q, k, v, o, gate, up, down in Qwen2.5-VL and Qwen3-VL; the vision tower's own MLPs
share some of those names, the pattern leaves them out), each W x + (alpha / r) B A x with B = 0 at
the start, so step 0 is the base model. The vision tower is frozen, or trained in full with
`--lora-vision merger|tower` (PEFT `modules_to_save`: a trained copy beside the frozen original).
Everything else stays frozen, so AdamW holds state for the adapters only.

The KL reference is the policy with its adapters disabled (PEFT `disable_adapter`, `Reference`): the
base weights are shared, so no second copy of the model is loaded (L14 in docs/departures.md;
notes §3). It is exactly the model the run started from, as the full fine-tuning reference is.

Adapters are created with one seed on every rank (FSDP2 shards each rank's own tensors and never
broadcasts: ranks initialised differently would train a mixture). Export (`export`) writes the
adapter folder (`<folder>_lora`, loadable with `peft.PeftModel.from_pretrained`) and a plain HF
folder with the adapters merged into the base weights by PEFT's `merge_and_unload` (loadable by
transformers without peft).
"""
from __future__ import annotations

from pathlib import Path

import torch

import distributed
from config import UserError

# --lora-vision -> modules_to_save
VISION = {"frozen": None, "merger": ["visual.merger"], "tower": ["visual"]}

def decoder_targets(hf, spec: str = "auto") -> str:
    r"""The PEFT target_modules regex for `spec`: itself, or for "auto" one built from the model:
    the names of the nn.Linear modules inside every decoder layer (hf.model.language_model.layers),
    under any decoder layer, e.g.
    r".*language_model\.layers\.\d+\.(mlp\.down_proj|...|self_attn\.v_proj)" (sorted). Every layer,
    not the first: Qwen3.5's layers differ in kind (linear_attn.in_proj_qkv ... in its Gated
    DeltaNet layers, self_attn.q_proj ... in its full-attention layers), and a q/k/v/o list would
    adapt a quarter of them (H3)."""
    import re
    if spec != "auto":
        return spec
    names = sorted({re.escape(n) for layer in hf.model.language_model.layers
                    for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)})
    return r".*language_model\.layers\.\d+\.(" + "|".join(names) + ")"


def check(cfg) -> None:
    """Raise config.UserError for LoRA settings that cannot work (negative rank, alpha <= 0,
    unknown --lora-vision)."""
    if cfg.lora_rank < 0 or cfg.lora_alpha <= 0:
        raise UserError(f"LoRA: need lora_rank >= 0 and lora_alpha > 0; got "
                        f"{cfg.lora_rank}, {cfg.lora_alpha}")
    if cfg.lora_vision not in VISION:
        raise UserError(f"--lora-vision must be one of {sorted(VISION)}, got {cfg.lora_vision!r}")


def attach(hf, cfg, seed: int):
    """Add LoRA adapters to `hf` (a Qwen2.5-VL or Qwen3-VL ForConditionalGeneration) in place and
    freeze everything else; the adapters go on `decoder_targets(hf, cfg.lora_targets)`.

    The adapters (fp32 even when the base is bf16: PEFT's autocast_adapter_dtype) are initialised
    from `seed` on every rank alike; the global RNG states (CPU and every CUDA device) are left as
    they were. Returns the `peft.PeftModel` around `hf` (for disabling the adapters and saving
    them), or None when cfg.lora_rank is 0. `hf` keeps its own module tree, with LoRA layers in
    place of the targeted Linears. Raises ValueError when no module matches cfg.lora_targets.
    """
    if cfg.lora_rank == 0:
        return None
    from peft import LoraConfig, get_peft_model
    # no dropout on the adapters: the update must see the function the rollout sampled from (the
    # on-policy ratio is exactly 1, and policy/logprob_gap measures only numerics)
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                        target_modules=decoder_targets(hf, cfg.lora_targets),
                        modules_to_save=VISION[cfg.lora_vision], bias="none")
    # torch.manual_seed also seeds every CUDA device: fork all of them, or every rank's CUDA
    # generator would end equal to `seed` (identical sampling on all ranks)
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        torch.manual_seed(seed)
        adapters = get_peft_model(hf, config, autocast_adapter_dtype=True)
    if adapters.base_model.model is not hf:
        raise RuntimeError("peft did not wrap the model in place")
    return adapters


def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters the optimizer updates: those with requires_grad (adapters under LoRA; all but
    a frozen tower otherwise)."""
    return [p for p in module.parameters() if p.requires_grad]


class Reference:
    """The KL reference under LoRA: the wrapped policy called with its adapters
    disabled (no second copy).

    policy: the wrapped log-prob module (DDP, FSDP2 or plain); adapters: `attach`'s PeftModel.
    Called like the policy, under torch.no_grad(): returns the base model's per-token log-probs
    (N, L) float32. Every rank makes the same calls, so FSDP's all-gathers match; the disabled
    adapters' weights are gathered but unused.
    """

    def __init__(self, policy, adapters):
        self.policy, self.adapters = policy, adapters

    def __call__(self, *args, **kwargs):
        with self.adapters.disable_adapter():
            return self.policy(*args, **kwargs)


def export(module, adapters, tokenizer, base_dir: str | Path, folder: Path,
           proc: distributed.Dist) -> Path:
    """Write the adapters to `<folder>_lora` (PEFT format) and a plain HF folder `folder` with them
    merged into the base weights of `base_dir` (the run's starting model, which LoRA leaves
    unchanged). Collective under FSDP (every rank calls it); rank 0 writes. Returns `folder`. Raises
    OSError naming the folder when writing fails."""
    from peft import PeftModel
    from checkpoint import save_hf
    from model import family
    state = distributed.full_state_dict(module)                   # hf keys, rank 0 only
    if proc.main:
        adapter_dir = folder.with_name(folder.name + "_lora")
        adapters.save_pretrained(adapter_dir,
                                 state_dict={"base_model.model." + k: v for k, v in state.items()})
        base = family(distributed.unwrap(module).hf.config).MODEL_CLASS.from_pretrained(
            base_dir, dtype=torch.float32)
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
        save_hf(merged, tokenizer, folder)
    distributed.barrier(proc)
    return folder
