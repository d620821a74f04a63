import json
import math

from hf_scratch_gpt.cli import main


def test_smoke_command(capsys):
    assert main(["smoke", "--text", "hello world"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] == len("hello world")
    assert math.isclose(result["perplexity"], math.exp(result["loss"]), rel_tol=1e-3)
