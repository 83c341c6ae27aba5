"""Row labels of the Table-1 table: runs of one system must stay distinguishable, the decoder included."""

from __future__ import annotations

from pipelines.eval.table import build_table, sampler_label


def run(system: str, run_id: str, decode: str, steps: int = 10) -> dict:
    return {"run_id": run_id, "system": system, "checkpoint": f"ckpt/{system}",
            "sampler": {"steps_per_block": steps, "block_length": 32, "decode": decode},
            "audio_qa": {"llama_questions": {"speech": {"score": 1.0}, "text": {"score": 2.0}}}}


def test_runs_differing_only_in_decode_get_distinct_labels() -> None:
    table = build_table([run("ttt", "a", "ttt"), run("ttt", "b", "ar"), run("ar_baseline", "c", "ar"),
                         run("ar_baseline", "d", "ar", steps=4)])
    labels = [r["label"] for r in table["rows"]]
    assert labels == ["AR baseline (steps 10, block 32)", "AR baseline (steps 4, block 32)",
                      "TtT (steps 10, block 32)", "TtT (decode ar, steps 10, block 32)"]
    assert len(set(labels)) == len(labels)


def test_decode_is_named_only_when_not_the_systems_own() -> None:
    assert sampler_label({"decode": "nar", "steps_per_block": 3}, "nar_baseline") == "steps 3"
    assert sampler_label({"decode": "ttt"}, "ttt_no_sst") == "" and sampler_label({"decode": "auto"}, "ttt") == ""
    assert sampler_label({"decode": "ttt"}, "nar_baseline") == "decode ttt"
    assert sampler_label({"decode": "ar"}, "my_variant") == "decode ar"  # free labels are TtT systems
    # a lone run decoded other than its system was trained says so; one decoded its own way is the bare system
    alone = build_table([run("nar_baseline", "x", "ttt"), run("ttt", "y", "ttt")])
    assert [r["label"] for r in alone["rows"]] == ["NAR baseline (decode ttt, steps 10, block 32)", "TtT"]
