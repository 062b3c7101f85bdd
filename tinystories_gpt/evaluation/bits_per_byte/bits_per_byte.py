"""An `evaluate` metric: loss, perplexity and bits per UTF-8 byte from summed token losses.

It ships inside the package and loads by path (`evaluate.load(<this folder>)`): `evaluate.load("perplexity")`
would fetch a script from the Hub, and it recomputes the model's forward itself, which we already did.
"""

import math

import datasets
import evaluate

_DESCRIPTION = """
Language-model quality over a text split. Each added item is one batch's summed next-token loss in nats
(`nats`) and how many tokens it predicted (`tokens`); `compute(num_bytes=...)` needs the split's size in
UTF-8 bytes. Bits per byte = total nats / (ln 2 x bytes): unlike perplexity it compares models that use
different tokenizers.
"""

_KWARGS_DESCRIPTION = """
Args:
    nats (`list[float]`): summed cross-entropy, in nats, of each batch's predicted tokens.
    tokens (`list[int]`): number of predicted tokens in each batch.
    num_bytes (`int`): UTF-8 bytes of the text the tokens encode.
Returns:
    loss: mean nats per token; perplexity: exp(loss); bits_per_byte; tokens; bytes.
Examples:
    >>> metric = evaluate.load("path/to/bits_per_byte")
    >>> metric.compute(nats=[2.0 * math.log(2)], tokens=[2], num_bytes=4)["bits_per_byte"]
    0.5
"""


class BitsPerByte(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"nats": datasets.Value("float64"), "tokens": datasets.Value("int64")}),
        )

    def _compute(self, nats, tokens, num_bytes: int) -> dict:
        total_nats = math.fsum(nats)
        total_tokens = sum(tokens)
        if total_tokens <= 0 or num_bytes <= 0:
            raise ValueError(f"Nothing to score: {total_tokens} tokens over {num_bytes} bytes.")
        loss = total_nats / total_tokens
        return {
            "loss": loss,
            "perplexity": math.exp(loss),
            "bits_per_byte": total_nats / (math.log(2) * num_bytes),
            "tokens": total_tokens,
            "bytes": num_bytes,
        }
