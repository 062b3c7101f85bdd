"""The Hub-ready model folder, written atomically, and its upload.

A Hub-ready folder holds everything `from_pretrained` and the Hub page need, with nothing from this package:

    model.safetensors                  the weights (the tied output head is stored once, as the embedding)
    config.json                        with `auto_map`, so `trust_remote_code=True` finds the code below
    configuration_tinystories_gpt.py   the model's code, copied by `save_pretrained`
    modeling_tinystories_gpt.py
    tokenizer.json, tokenizer_config.json, ...
    generation_config.json             sampling defaults for stories
    README.md                          the model card, rendered from model_card.md
    loss_curve.png                     when a loss curve is given

Training writes its best model with `save_hub_folder`; the converters in conversion.py write theirs with
`staged_folder` + `write_hub_folder`, so that they can check the written files before they replace anything.
"""

import ctypes
import errno
import math
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from .evaluation import TEMPERATURE, TOP_K
from .faults import removed_on_failure
from .tokenization import check_vocab_fits

TEMPLATE_PATH = Path(__file__).resolve().with_name("model_card.md")  # the repo's top-level model_card.md links here
LICENSE = "mit"
TAGS = ["tinystories", "gpt", "nanogpt", "story-generation"]
LOSS_CURVE_NAME = "loss_curve.png"
HUB_FOLDER_FILES = ("config.json", "model.safetensors", "generation_config.json", "README.md")
# What the saved code needs, for the card: the same as pyproject.toml's (a test keeps them equal)
TRANSFORMERS_REQUIREMENT = "transformers>=5.24,<6"
PROMPT_ROOM = 4  # a generation default must leave part of the context for the prompt
AT_FDCWD, RENAME_EXCHANGE = -100, 2  # from Linux's <fcntl.h> and <linux/fs.h>


# 1. Writing a folder without ever leaving a half-written one --------------------------------------------------


def check_output_dir(output_dir: str | Path, overwrite: bool) -> Path:
    """Refuse an existing `output_dir` unless `overwrite`; called before any slow work."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise ValueError(f"output folder {output_dir} already exists; pass overwrite=True (--overwrite) to replace it")
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output path {output_dir} is a file, not a folder; pick another output folder")
    return output_dir


@contextmanager
def staged_folder(output_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty sibling folder to write into; when the block succeeds it takes `output_dir`'s place.

    If the block raises, the staged folder is deleted and `output_dir` is left as it was (a full disk raises
    DiskFull). An existing `output_dir` (allowed only with `overwrite`) is swapped with the new folder in one
    atomic step, so a reader always finds the old complete folder or the new one, never none; the folder is a
    plain directory (no symlink), created with the usual permissions (the umask's, like `mkdir`).
    """
    output_dir = check_output_dir(output_dir, overwrite).absolute()
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = output_dir.with_name(f".{output_dir.name}.{secrets.token_hex(4)}.tmp")
    staging.mkdir()
    with removed_on_failure(staging, f"the folder {output_dir.name}"):
        yield staging
        give_usual_permissions(staging)
    if not output_dir.exists():
        os.replace(staging, output_dir)
    elif exchange_paths(staging, output_dir):
        shutil.rmtree(staging)  # now the old folder
    else:  # no atomic swap on this filesystem: move aside, rename in (a run killed in between is repaired later)
        aside = output_dir.with_name(f".{output_dir.name}.{secrets.token_hex(4)}.old")
        aside.mkdir()
        os.replace(output_dir, aside / output_dir.name)
        os.replace(staging, output_dir)
        shutil.rmtree(aside)


def give_usual_permissions(folder: Path) -> None:
    """The modes `mkdir` and `open` give under the umask, for a folder meant to be shared: safetensors writes its
    files readable by their owner only."""
    umask = os.umask(0)  # the only way to read it (and the value is put straight back)
    os.umask(umask)
    for path in (folder, *folder.rglob("*")):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def exchange_paths(first: Path, second: Path) -> bool:
    """Swap two paths atomically with Linux's renameat2(RENAME_EXCHANGE); False where the system or filesystem
    cannot (Python has no binding for it, hence ctypes)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # not Linux, or a C library older than glibc 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a kernel or filesystem without the flag
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


# 2. The folder's contents -------------------------------------------------------------------------------------


def story_generation_config(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """Sampling defaults for stories that fit the model's context and stop at end-of-text."""
    config = model.config
    eos_token_id = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_token_id
    return GenerationConfig(
        do_sample=True,
        temperature=TEMPERATURE,
        top_k=TOP_K,
        # The model refuses prompt + new tokens beyond block_size, so a default of block_size new tokens would
        # fail for every prompt; three quarters leaves room for a sentence-long prompt.
        max_new_tokens=max(1, min(config.block_size - PROMPT_ROOM, config.block_size * 3 // 4)),
        bos_token_id=config.bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def eval_results(metrics: dict | None, dataset_id: str | None) -> list[EvalResult]:
    """The card's `model-index` entries: validation loss, perplexity and bits per byte, where measured.

    Only for a Hub dataset: `model-index` names the dataset by its Hub id, and local files have none.
    """
    if dataset_id is None:
        return []
    results = []
    for metric_type, metric_name, value in card_results(metrics):
        results.append(
            EvalResult(
                task_type="text-generation",
                task_name="Text Generation",
                dataset_type=dataset_id,
                dataset_name=dataset_id.split("/")[-1],
                dataset_split=metrics.get("split", "validation"),
                metric_type=metric_type,
                metric_name=metric_name,
                metric_value=value,
            )
        )
    return results


def card_results(metrics: dict | None) -> list[tuple[str, str, float]]:
    """(metric type, display name, value) for each measured metric.

    `loss` is the held-out loss in nats per token (training's early records call it `val_loss`), on the
    `split` the metrics name (default: validation); perplexity is exp(loss) unless given.
    """
    if not metrics:
        return []
    loss = metrics.get("loss", metrics.get("val_loss"))
    perplexity = metrics.get("perplexity", math.exp(loss) if loss is not None else None)
    measured = [
        ("loss", f"{metrics.get('split', 'validation').capitalize()} loss (nats/token)", loss),
        ("perplexity", "Perplexity", perplexity),
        ("bits_per_byte", "Bits per byte", metrics.get("bits_per_byte")),
    ]
    return [(kind, name, round(float(value), 4)) for kind, name, value in measured if value is not None]


def render_model_card(
    model: PreTrainedModel,
    generation_config: GenerationConfig,
    *,
    metrics: dict | None = None,
    training: dict | None = None,
    samples: list[str] | None = None,
    loss_curve: str | None = None,
    repo_id: str | None = None,
    dataset_id: str | None = None,
    evaluation: str | None = None,
    base_model: str | None = None,
    template_path: str | Path = TEMPLATE_PATH,
) -> ModelCard:
    """The model card: Hub metadata (with `model-index` from `metrics`) and the template's sections.

    `dataset_id` is the Hub dataset the model was trained on (None for local files: the card then names
    `training["dataset"]` and claims no Hub dataset); `evaluation` says how `metrics` were measured; `base_model`
    is the Hub id of the model whose weights training started from (the Hub links a fine-tune to it).
    """
    config = model.config
    model_name = repo_id.split("/")[-1] if repo_id else "tinystories-gpt"
    results = eval_results(metrics, dataset_id)
    card_data = ModelCardData(
        model_name=model_name,
        license=LICENSE,
        language="en",
        datasets=[dataset_id] if dataset_id else None,
        base_model=base_model,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=TAGS,
        metrics=[result.metric_type for result in results] or None,
        eval_results=results or None,
    )
    architecture = {
        name: getattr(config, name)
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias", "activation_function")
    }
    architecture["tied output head"] = config.tie_word_embeddings
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=model_name,
        model_id=repo_id or "path/to/this/folder",
        dataset_id=dataset_id,
        dataset=(training or {}).get("dataset"),
        base_model=base_model,
        evaluation=evaluation,
        transformers_requirement=TRANSFORMERS_REQUIREMENT,
        num_parameters=model.num_parameters(),
        architecture=architecture,
        training=training or {},
        results={name: value for _, name, value in card_results(metrics)} | _counts(metrics),
        samples=samples or [],
        loss_curve=loss_curve,
        generation=generation_config,
    )


def _counts(metrics: dict | None) -> dict:
    """The evaluation's size, when recorded, shown beside the results."""
    names = {"tokens": "validation tokens", "bytes": "validation bytes", "step": "step"}
    return {label: metrics[key] for key, label in names.items() if metrics and key in metrics}


def write_hub_folder(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    folder: str | Path,
    *,
    metrics: dict | None = None,
    training: dict | None = None,
    loss_curve: str | Path | None = None,
    samples: list[str] | None = None,
    repo_id: str | None = None,
    dataset_id: str | None = None,
    evaluation: str | None = None,
    base_model: str | None = None,
    state_dict: dict | None = None,
) -> None:
    """Write the Hub-ready files into `folder` in place (no atomicity: see `save_hub_folder`).

    Args:
        metrics: validation figures for the card and its `model-index`: `loss` (nats/token; `val_loss` is
            accepted too), `perplexity`, `bits_per_byte`, and optionally `tokens`, `bytes`, `step`.
        training: the recipe, shown as a table in the card (any keys; values printed as they are).
        loss_curve: an image copied into the folder as loss_curve.png and shown in the card.
        samples: stories shown in the card.
        repo_id: the Hub repo the folder is meant for, used in the card's title and usage snippet.
        dataset_id: the Hub dataset the model was trained on, for the card's metadata; None for local files.
        evaluation: how `metrics` were measured, for the card (e.g. a full pass over which split).
        base_model: the Hub id of the model training started from (`--init_from`), for the card's metadata.
        state_dict: the weights to save, when `model`'s own are sharded (gathered with Accelerate's get_state_dict).
    """
    folder = Path(folder)
    check_vocab_fits(tokenizer, model.config.vocab_size)
    if loss_curve is not None and not Path(loss_curve).is_file():
        raise FileNotFoundError(f"loss curve {loss_curve} does not exist; pass loss_curve=None to leave it out")

    # weights, config.json with auto_map, and the code (registered on import)
    model.save_pretrained(folder, state_dict=state_dict)
    tokenizer.save_pretrained(folder)
    generation_config = story_generation_config(model, tokenizer)
    generation_config.save_pretrained(folder)  # replaces the plain one save_pretrained wrote
    if loss_curve is not None:
        shutil.copyfile(loss_curve, folder / LOSS_CURVE_NAME)
    card = render_model_card(
        model,
        generation_config,
        metrics=metrics,
        training=training,
        samples=samples,
        loss_curve=LOSS_CURVE_NAME if loss_curve is not None else None,
        repo_id=repo_id,
        dataset_id=dataset_id,
        evaluation=evaluation,
        base_model=base_model,
    )
    card.save(folder / "README.md")


def save_hub_folder(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    **contents,
) -> Path:
    """Write a Hub-ready folder for `model` and `tokenizer` at `output_dir`, atomically; returns the folder.

    `contents` are `write_hub_folder`'s keywords (metrics, training, loss_curve, samples, ...); `overwrite`
    replaces an existing `output_dir`, only once the new folder is complete.
    """
    with staged_folder(output_dir, overwrite) as staging:
        write_hub_folder(model, tokenizer, staging, **contents)
    return Path(output_dir)


# 3. Loading and upload ---------------------------------------------------------------------------------------


def load_model_and_tokenizer(model_id: str | Path, trust_remote_code: bool = False, device: str = "cpu"):
    """(causal LM in eval mode, tokenizer) from a saved folder or a Hub id, with an error that says what to pass."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise FileNotFoundError(
            f"cannot load a model from {str(model_id)!r}: it is neither a folder holding config.json, weights and a "
            f"tokenizer, nor a reachable Hub repo ({error}). Pass the folder train.py wrote (e.g. out/quickstart/best)."
        ) from error
    return model.to(device).eval(), tokenizer


def check_hub_folder(model_dir: str | Path) -> Path:
    """Refuse a folder that is not Hub-ready (for example a training checkpoint), naming the missing files."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist; write one with convert.py or train.py")
    missing = [name for name in HUB_FOLDER_FILES if not (model_dir / name).is_file()]
    if missing:
        raise ValueError(
            f"{model_dir} is not a Hub-ready folder: it lacks {', '.join(missing)}. Convert it first "
            "(convert.py nanogpt / checkpoint) or push the best/ folder that train.py writes"
        )
    return model_dir


def push_to_hub(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload TinyStories GPT",
    token: str | None = None,
) -> str:
    """Upload a Hub-ready folder, exactly as it is on disk, to the model repo `repo_id`; returns the commit URL.

    The repo is created if needed (`private=None` keeps an existing repo's visibility; new repos are public),
    and so is the branch `revision`. The token comes from `token`, `HF_TOKEN` or `hf auth login`.
    """
    model_dir = check_hub_folder(model_dir)
    if repo_id.count("/") != 1:
        raise ValueError(f"repo id {repo_id!r} must look like user/name (or org/name)")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=model_dir, revision=revision, commit_message=commit_message)
    return commit.commit_url


__all__ = [
    "load_model_and_tokenizer",
    "push_to_hub",
    "render_model_card",
    "save_hub_folder",
    "staged_folder",
    "write_hub_folder",
]
