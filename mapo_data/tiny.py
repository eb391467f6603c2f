"""The built-in tiny SDXL-architecture model.

It has every part of Stable Diffusion XL (a UNet with text-time micro-conditioning, a VAE with
SDXL's 8x downsampling, two CLIP text encoders, the second one with a projection, two CLIP BPE
tokenizers and an Euler scheduler), only very small: about 1.2 M parameters, 5 MB in fp32. The
architecture and its seeded initial weights are defined here; the weights it ships with
(``mapo_data/resources/tiny-sdxl``, diffusers layout) were trained on the procedural world of
:mod:`mapo_data.world` by :mod:`mapo_data.tiny_training`, so its pictures follow their prompt and
the presets' prefixes change their style. It loads offline with ``from_pretrained`` like any Hub
model, so tests and the quickstart exercise exactly the code path used for SDXL. The world never
depicts people or anything sexual.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

from mapo_data.errors import MapoError

TINY_MODEL_NAME = "tiny"
TINY_SEED = 0
TINY_RESOLUTION = 64

# Words the tiny tokenizer learns whole, so typical prompts take about as many tokens as with the
# real CLIP vocabulary (unknown words fall back to characters, as in real BPE). Kept here rather
# than derived from the prompt file, so the tiny model never changes when prompts are edited.
_TINY_WORDS = """
a an the of in on at with and or to from by for over under near above below behind into onto
image photo picture painting drawing illustration art style animated disney pixel realistic 8k
sexual nudity +19 render scene portrait landscape close up view wide shot detailed cat dog fox
bird horse owl rabbit bear wolf deer fish whale turtle dragon robot lion tiger elephant giraffe
penguin frog mouse monkey butterfly bee duck cow sheep goat squirrel man woman girl boy child
people person old young friends family couple chef farmer sailor knight wizard astronaut
scientist musician dancer teacher doctor pilot house castle tower bridge city street village
market cafe kitchen garden library room window door road path river lake sea ocean beach island
mountain hill forest field desert valley sky cloud clouds sun moon star stars rain snow storm
fog wind night day morning evening sunset sunrise dawn dusk winter summer spring autumn fall
light shadow red blue green yellow orange purple pink white black brown gray grey golden silver
small big large tiny huge little tall long short old new bright dark quiet busy empty full
sitting standing walking running flying swimming sleeping reading eating playing holding
looking riding wearing carrying cooking painting dancing singing waiting boat ship train car
bicycle bus plane balloon kite lantern lamp clock book cup tea coffee table chair bed flower
flowers tree trees leaves grass stone rock wall roof fire candle bread cake fruit apple basket
hat coat dress umbrella guitar piano
""".split()


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable-unicode map (every byte gets a visible character)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def _apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Standard BPE: repeatedly merge the adjacent pair with the lowest rank."""
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, len(ranks) + 1), i) for i, pair in enumerate(pairwise(symbols))]
        rank, i = min(pairs)
        if rank > len(ranks):
            break
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2 :]
    return symbols


def tiny_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-format BPE vocabulary: all bytes (plain and word-final), whole-word merges, specials.

    Each word is first split with the merges learned so far, then its pieces are joined left to
    right with new (lowest-priority) merges, so every listed word ends up as a single token.
    """
    byte_to_char = _bytes_to_unicode()
    byte_chars = list(byte_to_char.values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    seen_tokens = set(tokens)
    for word in _TINY_WORDS:
        symbols = [byte_to_char[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        pieces = _apply_merges(symbols, ranks)
        current = pieces[0]
        for piece in pieces[1:]:
            ranks[(current, piece)] = len(merges)
            merges.append((current, piece))
            current += piece
            if current not in seen_tokens:
                tokens.append(current)
                seen_tokens.add(current)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def tiny_text_config(vocab: dict[str, int], num_hidden_layers: int) -> dict:
    """CLIPTextConfig arguments of the tiny models' text towers (also the tiny CLIP's)."""
    return dict(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu",
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )


def initial_components():
    """All pipeline components with their seeded *initial* weights, before training (imports are
    local: torch is heavy). The shipped, trained model is :func:`tiny_model_path`; these are the
    start of :mod:`mapo_data.tiny_training` and of checks that need an untrained model."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    vocab, merges = tiny_vocab_and_merges()
    torch.manual_seed(TINY_SEED)
    unet = UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 1),
        # SDXL's micro-conditioning: 6 size/crop numbers embedded with addition_time_embed_dim
        # each, concatenated with the second encoder's pooled projection (32).
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64,  # 32 + 32: the two encoders' hidden states side by side
        norm_num_groups=8,
    )
    torch.manual_seed(TINY_SEED + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=TINY_RESOLUTION,
        scaling_factor=0.13025,  # SDXL's value
    )
    text_kwargs = {**tiny_text_config(vocab, num_hidden_layers=3), "projection_dim": 32}
    torch.manual_seed(TINY_SEED + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_kwargs))
    torch.manual_seed(TINY_SEED + 3)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_kwargs))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tokenizer_2 = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=scheduler,
    )


TINY_MODEL_DIR = Path(__file__).parent / "resources" / "tiny-sdxl"


def shipped_folder(folder: Path, what: str) -> Path:
    """A model folder shipped inside the package, or one line saying how to get it back."""
    if not folder.is_dir() or not any(folder.iterdir()):
        raise MapoError(
            f"{what} is missing from the mapo package ({folder}); reinstall mapo, or remake it with "
            "`python -m mapo_data.tiny_training`"
        )
    return folder


def tiny_model_path() -> Path:
    """The folder of the trained tiny model in the diffusers layout, shipped with the package."""
    return shipped_folder(TINY_MODEL_DIR, "the built-in tiny model")


def resolve_model_id(model: str) -> str:
    """Map the name ``tiny`` to the built-in model's folder; pass anything else through."""
    return str(tiny_model_path()) if model == TINY_MODEL_NAME else model
