"""`benchmarks/bench_process_input.py`: on a small data set, each process
of N decodes 1/N of the pairs and gets the baseline's arrays."""

from tests.benchmarks.scripts import load_script


def test_each_process_decodes_its_share_and_the_table_says_so(
    monkeypatch, demo_data, capsys
):
    script = load_script("bench_process_input", monkeypatch)
    status = script.main(["--data", str(demo_data), "--processes", "1,2",
                          "--repeats", "1", "--batch-size", "12"])
    out = capsys.readouterr().out
    assert status == 0
    assert "Every process's batches the same both ways: yes" in out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:4]]
            for line in out.splitlines() if line.startswith("| ") and
            line.split("|")[1].strip().isdigit()}
    # 40/12/12 training pairs of each type at 12 a step: 10 steps of 4 of
    # each type, 120 pairs an epoch, decoded by one process or halved.
    assert rows == {"1": ["120", "120"], "2": ["60", "120"]}
    # The counter is put back: make_batches decodes with decode_pair again.
    from kpair.data import batching, records
    assert batching.decode_pair is records.decode_pair
