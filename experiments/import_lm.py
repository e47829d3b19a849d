"""Import a Hugging Face LLaMA-style checkpoint directory into a diffjax language-model directory.

The checkpoint directory is what ``LlamaForCausalLM.save_pretrained`` writes: ``config.json``,
``model.safetensors`` or its shards with ``model.safetensors.index.json``, and the tokenizer's
``tokenizer.json``. Read without torch; every key and shape is checked, and a configuration the
model does not reproduce exactly (scaled RoPE, biases, another activation or head dim, an odd
head count) is refused with its cause. The tokenizer is read by the ``tokenizers`` library
(``pip install 'diffjax[lm-import]'``) and copied beside the model. Writes ``OUT/config.json``,
``OUT/params/``, ``OUT/tokenizer.json`` (all under the manifest's digests) and
``OUT/conversion.json`` (source, SHA-256 of each file read, the config). Then ``diffjax analyse
--config.checkpoint=OUT --config.text=prompts.txt`` runs the per-branch analysis on it, and
:func:`diffjax.checkpoint.load_lm_model` loads it for the text attacks
(:mod:`diffjax.attacks.text`).

    diffjax import-lm checkpoints/llama-tiny models/llama_tiny
"""

from __future__ import annotations

import argparse
import pathlib


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=pathlib.Path,
                        help="Hugging Face checkpoint directory (config.json, model.safetensors "
                        "or its shards, tokenizer.json)")  # fmt: skip
    parser.add_argument("out", type=pathlib.Path, help="diffjax model directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it already exists")


def run(args: argparse.Namespace) -> dict:
    """Import ``args.checkpoint`` into ``args.out``; the conversion record.

    Raises:
      CheckpointError: unreadable or missing files, keys/shapes that do not fit, an unmodelled
        configuration, a tokenizer whose vocabulary exceeds the model's.
      FileExistsError: ``args.out`` exists and ``args.overwrite`` is off.
    """
    # JAX only now: the arguments are parsed and --help has answered.
    from diffjax.checkpoint import save_model, write_json_atomic
    from diffjax.experiments.convert_clip import sha256
    from diffjax.experiments.import_vit import read_json
    from diffjax.lm_import import (
        TOKENIZER_FILE,
        ConversionError,
        config_from_hf,
        convert_llama,
        load_tokenizer,
        read_hf_weights,
    )
    from diffjax.vit import count_params

    src = args.checkpoint
    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
    if not src.is_dir():
        raise FileNotFoundError(f"checkpoint directory {src} does not exist")
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} has no config.json (a Hugging Face checkpoint directory)")
    config = config_from_hf(read_json(src / "config.json"))
    if not (src / TOKENIZER_FILE).is_file():
        raise ConversionError(f"{src} has no {TOKENIZER_FILE} (a tokenizer.model alone, "
                              "SentencePiece, is not read: convert it with transformers' "
                              "AutoTokenizer(...).save_pretrained)")  # fmt: skip
    tokenizer = load_tokenizer(src / TOKENIZER_FILE)
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab > config.vocab_size:
        raise ConversionError(f"{src / TOKENIZER_FILE} has {vocab} tokens, more than the "
                              f"model's vocab_size {config.vocab_size}")  # fmt: skip
    state, weight_files = read_hf_weights(src)
    model = convert_llama(state, config)
    save_model(args.out, model, files={TOKENIZER_FILE: src / TOKENIZER_FILE})
    read = ["config.json", TOKENIZER_FILE, *weight_files]
    record = {
        "source": str(src.resolve()),
        "source_sha256": {name: sha256(src / name) for name in read},
        "layout": "llama",
        "tokenizer_vocab": vocab,
        "parameters": count_params(model),
        "config": config.to_dict(),
    }
    write_json_atomic(args.out / "conversion.json", record)
    print(f"wrote {args.out} (LLaMA-style LM, {record['parameters']:,} parameters, "
          f"tokenizer of {vocab} tokens)")  # fmt: skip
    return record
