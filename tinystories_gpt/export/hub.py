"""The Hub-ready model folder, written atomically, and its upload (a Space folder's too).

A Hub-ready folder holds everything `from_pretrained` and the Hub page need, with nothing from this package:

    model.safetensors                  the weights (the tied output head is stored once, as the embedding)
    config.json                        with `auto_map`, so `trust_remote_code=True` finds the code below
    configuration_tinystories_gpt.py   the model's code, copied by `save_pretrained`
    modeling_tinystories_gpt.py
    tokenizer.json, tokenizer_config.json, ...
    chat_template.jinja                the opening-in, story-out chat template (data/tokenization.py)
    generation_config.json             sampling defaults for stories
    README.md                          the model card, rendered from model_card.md
    loss_curve.png                     when a loss curve is given

Training writes its best model with `save_hub_folder`; the converters write theirs with `write_hub_folder` into a
staging folder (export/checks.py), so that they check the written files before they replace anything.
"""

import math
import shutil
from pathlib import Path

import torch
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, SpaceCard
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..data.tokenization import check_vocab_fits, with_story_chat_template
from ..evaluation.stories import story_generation_config
from ..files import check_output, folder_damage, replacing_folder, write_manifest

TEMPLATE_PATH = Path(__file__).resolve().with_name("model_card.md")  # the repo's top-level model_card.md links here
LICENSE = "mit"
TAGS = ["tinystories", "gpt", "nanogpt", "story-generation"]
LOSS_CURVE_NAME = "loss_curve.png"
HUB_FOLDER_FILES = ("config.json", "model.safetensors", "generation_config.json", "README.md")
# What the saved code needs, for the card: the same as pyproject.toml's (a test keeps them equal)
TRANSFORMERS_REQUIREMENT = "transformers>=5.24,<6"
SPACE_SDKS = ("static", "gradio")  # the Spaces demo/space.py writes


# 1. The folder's contents -------------------------------------------------------------------------------------


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
        story_figures=(metrics or {}).get("story_figures"),
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
    with_story_chat_template(tokenizer).save_pretrained(folder)
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
    path = check_output(output_dir, overwrite)
    with replacing_folder(path, f"the folder {path.name}") as staging:
        write_hub_folder(model, tokenizer, staging, **contents)
        write_manifest(staging)
    return Path(output_dir)


# 2. Loading and upload ---------------------------------------------------------------------------------------


def load_model_and_tokenizer(model_id: str | Path, trust_remote_code: bool = False, device: str = "cpu"):
    """(causal LM in eval mode, tokenizer) from a saved folder or a Hub id, with an error that says what to pass."""
    if Path(model_id).is_dir():
        check_model_folder(Path(model_id))
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise FileNotFoundError(
            f"cannot load a model from {str(model_id)!r}: it is neither a folder holding config.json, weights and a "
            f"tokenizer, nor a reachable Hub repo ({error}). Pass the folder train.py wrote (e.g. out/quickstart/best)."
        ) from error
    return model.to(device).eval(), tokenizer


def check_model_folder(model_dir: Path) -> None:
    """Refuse a local model folder without config.json, or whose files are damaged (by its manifest where it has
    one, else by their formats), naming what is wrong: Transformers would say "Unrecognized model" or worse."""
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist; pass a folder train.py or convert.py wrote")
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir} has no config.json, so it is not a saved model; pass a folder written by save_pretrained "
            "(train.py's best/, or a convert.py output)"
        )
    damage = folder_damage(model_dir, manifest_required=False)
    if damage:
        raise ValueError(
            f"model folder {model_dir} is damaged: {damage}. Write it again (train.py, convert.py) or download it again"
        )


def load_config(model_dir: str | Path) -> PretrainedConfig:
    """The config of a saved model folder, once the folder is checked (`check_model_folder`)."""
    model_dir = Path(model_dir)
    check_model_folder(model_dir)  # first: AutoConfig would take a path that is not a folder for a Hub repo id
    try:
        return AutoConfig.from_pretrained(model_dir)
    except ValueError:
        raise ValueError(
            f"{model_dir}/config.json names no model type this Transformers knows; pass a folder written by "
            "save_pretrained (train.py's best/, or a convert.py output)"
        ) from None


def load_pretrained(model_dir: str | Path, model_class: type[PreTrainedModel], model_type: str):
    """(model in float32, tokenizer) from a saved folder, after checking it holds a `model_type` model."""
    config = load_config(model_dir)
    if config.model_type != model_type:
        raise ValueError(
            f"{model_dir} holds a {config.model_type!r} model, not {model_type!r}; pick the other conversion"
        )
    model = model_class.from_pretrained(model_dir, config=config, dtype=torch.float32).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"{model_dir} holds no loadable tokenizer ({error}); save one beside the model"
        ) from None
    return model, tokenizer


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


def push_space(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    commit_message: str = "Upload the story demo",
    token: str | None = None,
) -> str:
    """Create or update the Space `repo_id` so that it holds exactly `folder` (a `convert.py space` folder);
    returns the commit URL. Files the folder no longer has are deleted from the Space."""
    folder = Path(folder)
    readme = folder / "README.md"
    if not readme.is_file():
        raise FileNotFoundError(
            f"{folder} has no README.md, so it is not a Space folder: write one with "
            f"`convert.py space MODEL {folder} --sdk static` (or --sdk gradio)"
        )
    sdk = SpaceCard.load(readme).data.sdk
    if sdk not in SPACE_SDKS:
        raise ValueError(f"{readme} names no Space SDK (sdk: {sdk!r}); write the folder with convert.py space")
    if repo_id.count("/") != 1:
        raise ValueError(f"Space id {repo_id!r} must look like user/name (or org/name)")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="space", space_sdk=sdk, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=folder, repo_type="space", commit_message=commit_message, delete_patterns="*"
    )
    return commit.commit_url


__all__ = [
    "load_model_and_tokenizer",
    "push_space",
    "push_to_hub",
    "render_model_card",
    "save_hub_folder",
    "write_hub_folder",
]
