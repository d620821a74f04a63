"""Next-token accuracy as an `evaluate` module, loadable offline by path:

    evaluate.load("<package>/metrics/accuracy")   # or hf_scratch_gpt.evaluation.load_metric("accuracy")

`predictions` are predicted token ids and `references` the true next tokens, already aligned (shifted);
references equal to -100 are not scored. Outputs `accuracy` = correct / scored and `tokens` = scored.
"""

import datasets
import evaluate

IGNORE_INDEX = -100
_DESCRIPTION = "Fraction of scored positions whose predicted token id equals the reference token id."
_INPUTS = """
Args:
    predictions (list of int): predicted token ids (argmax of the logits).
    references (list of int): true next-token ids; -100 marks a position that is not scored.
Returns:
    accuracy (float): correct / scored; tokens (int): number of scored positions.
"""


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        scored = [(p, r) for p, r in zip(predictions, references) if r != IGNORE_INDEX]
        if not scored:
            raise ValueError("no scored positions: every reference is -100")
        correct = sum(1 for p, r in scored if p == r)
        return {"accuracy": correct / len(scored), "tokens": len(scored)}
