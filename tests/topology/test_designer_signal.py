"""`benchmarks/designer_signal.py`: each edge's paired effect on the utility, measured on real runs."""

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "designer_signal.py"
spec = importlib.util.spec_from_file_location("designer_signal", SCRIPT)
designer_signal = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = designer_signal
spec.loader.exec_module(designer_signal)


def test_each_edge_is_dropped_and_moved_and_dropping_one_saves_the_tokens_it_carried(tiny, capsys):
    argv = ["--model", "tiny-random", "--tasks", "3", "--max-new-tokens", "3", "--json"]
    assert designer_signal.main([*argv, "--channels", "text", "kv-select@100"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {row["variant"]: row for row in result["rows"]}
    edges = ["agent_1->agent_2", "agent_1->agent_3", "agent_2->agent_3"]  # the complete DAG of three agents
    assert set(rows) == {"own graph"} | {f"without {e}" for e in edges} | {f"{e} on kv-select@100" for e in edges}
    own = rows["own graph"]
    assert own["score_change"] == own["cost_change"] == own["utility_change"] == 0
    for edge in edges:
        dropped = rows[f"without {edge}"]
        assert dropped["cost_change"] < 0  # the receiver no longer reads the message: fewer prompt tokens
        assert dropped["utility_change"] > 0 or dropped["score_change"] < 0
    assert result["cost"] == "tokens" and result["default_samples"] == 24 * 16
