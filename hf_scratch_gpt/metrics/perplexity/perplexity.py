"""Token-weighted perplexity as an `evaluate` module, loadable offline by path:

    evaluate.load("<package>/metrics/perplexity")   # or hf_scratch_gpt.evaluation.load_metric("perplexity")

Inputs are per-example totals (so full logits never need to be gathered): `nll_sum`, the sum of the token
negative log-likelihoods (nats) of the example, and `num_tokens`, how many tokens were scored.
Outputs `loss` = sum(nll_sum) / sum(num_tokens) (token-weighted, not a mean of per-example means),
`perplexity` = exp(loss) and `tokens`.
"""

import math

import datasets
import evaluate

_DESCRIPTION = "Token-weighted mean negative log-likelihood and its exponential, perplexity."
_INPUTS = """
Args:
    nll_sum (list of float): per example, the summed negative log-likelihood (nats) of its scored tokens.
    num_tokens (list of int): per example, the number of scored tokens.
Returns:
    loss (float): total NLL / total tokens; perplexity (float): exp(loss); tokens (int): total tokens.
"""


class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({"nll_sum": datasets.Value("float64"), "num_tokens": datasets.Value("int64")}),
        )

    def _compute(self, nll_sum, num_tokens):
        tokens = int(sum(num_tokens))
        if tokens == 0:
            raise ValueError("no scored tokens: every num_tokens is 0")
        loss = float(math.fsum(nll_sum)) / tokens
        return {"loss": loss, "perplexity": math.exp(loss), "tokens": tokens}
