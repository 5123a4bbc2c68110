"""benchmarks/step_overhead.py: its plain loop and floor train exactly what the preset trains, and it runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import step_overhead

pytestmark = pytest.mark.slow  # every test here trains, or starts processes


@pytest.mark.parametrize("model", ["dcgan", "wgan_gp", "wgan"])
def test_plain_loop_and_floor_train_what_the_preset_trains(model: str, tmp_path: Path) -> None:
    # Same seeds, data order, losses, optimisers and schedule: after 10 batches (two generator steps
    # at n_critic 5) the generators agree, bitwise where the project's critic forwards are the plain
    # loop's (batch norm) and to float rounding where it concatenates real and fake (WGAN-GP).
    data_dir = step_overhead.write_random_mnist(tmp_path / "data", 16 * 12, 16)  # 12 batches of 16

    def args(run: str) -> list[str]:
        return step_overhead.cli_args(step_overhead.PRESETS[model], "tiny", data_dir, tmp_path / run, "cpu",
                                      None) + ["--trainer.enable_progress_bar", "false"]

    weights = {}
    for name, run in (("plain", step_overhead.plain_run(args("plain"), "cpu")),
                      ("floor", step_overhead.floor_run(args("floor"), "cpu")),
                      ("project", step_overhead.project_run(args("project")))):
        turns = step_overhead.Turns(name, run.train, warmup=0, batches=10, device="cpu")
        turns.turn()  # pauses at the start of batch 11
        weights[name] = torch.cat([p.detach().flatten().clone() for p in run.generator.parameters()])
        turns.finish()
        assert len(turns.ms_per_batch) == 1 and turns.ms_per_batch[0] > 0
    torch.testing.assert_close(weights["floor"], weights["plain"], rtol=0, atol=0)
    torch.testing.assert_close(weights["project"], weights["plain"], rtol=0, atol=1e-4)
    assert not torch.equal(weights["plain"], torch.cat([p.detach().flatten() for p in
                                                        step_overhead.build_cli(args("fresh"), run=False)
                                                        .model.generator.parameters()]))  # it did train


def test_quick_run_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    step_overhead.main(["--quick", "--models", "wgan", "--rounds", "1"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip().startswith("tiny |"))
    cells = [cell.strip() for cell in row.split("|")]
    assert cells[1] == "wgan" and all(float(cell.split(" [")[0]) > 0 for cell in cells[2:])
    ratio, spread = cells[6].split(" [")  # plain/project, the rounds' median ratio with its IQR
    low, high = (float(x) for x in spread.rstrip("]").split(", "))
    # The range is printed to 2 decimals, the ratio to 3: half a unit of the range's last digit, plus
    # float error (1.34 - 0.005 is 1.3350000000000002 in binary, while the ratio may print as 1.335).
    assert low - 0.005 - 1e-9 <= float(ratio) <= high + 0.005 + 1e-9


def test_each_ratio_is_the_median_of_the_rounds_ratios_with_their_quartiles() -> None:
    # plain/project per round: 1, 2, 3, 4 -> median 2.5, quartiles 1.25 and 3.75 (statistics' exclusive method).
    figures = {"plain": [1.0, 2.0, 3.0, 4.0], "floor": [1.0] * 4, "project": [1.0] * 4, "project, no bar": [2.0] * 4}
    row = step_overhead.table([("tiny", "wgan", figures)]).splitlines()[1]
    cells = [cell.strip() for cell in row.split("|")]
    assert cells[5:7] == ["2.500 [1.25, 3.75]", "2.500 [1.25, 3.75]"] and cells[8] == "1.250 [0.62, 1.88]"
