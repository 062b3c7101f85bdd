"""tinystories-gpt: a small GPT for TinyStories as a first-class Hugging Face Transformers model.

Importing the package registers the model with the Auto classes, so `AutoConfig`, `AutoModel` and
`AutoModelForCausalLM` know `model_type="tinystories_gpt"`, and `save_pretrained` writes `auto_map`
and copies the code, so a saved folder also loads where this package is not installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_tinystories_gpt import TinyStoriesGPTConfig
from .modeling_tinystories_gpt import TinyStoriesGPTForCausalLM, TinyStoriesGPTModel, TinyStoriesGPTPreTrainedModel

__version__ = "0.1.0"

AutoConfig.register(TinyStoriesGPTConfig.model_type, TinyStoriesGPTConfig, exist_ok=True)
AutoModel.register(TinyStoriesGPTConfig, TinyStoriesGPTModel, exist_ok=True)
AutoModelForCausalLM.register(TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM, exist_ok=True)

TinyStoriesGPTConfig.register_for_auto_class()
TinyStoriesGPTModel.register_for_auto_class("AutoModel")
TinyStoriesGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "TinyStoriesGPTConfig",
    "TinyStoriesGPTForCausalLM",
    "TinyStoriesGPTModel",
    "TinyStoriesGPTPreTrainedModel",
]
