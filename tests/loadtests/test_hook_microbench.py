"""The microbenchmark measures what it says: its hooked stack (our real hooks) is the plain stack
bit for bit when nobody steers, and applies each token's configuration when K > 0 (checked against
the plain layers with the vectors added by hand). Tiny dimensions, eager (the benchmark itself
checks the compiled stacks' idle outputs: `idle_output_equal`)."""

from __future__ import annotations

import torch

from loadtests.hook_microbench import Dims, HookedStack, build_layers, median_interval, run_stack, verdict

DIMS = Dims("tiny", hidden=16, ffn=32, heads=2, model_layers=15, layers=6)  # 10 of 15 layers -> 4 of 6
CPU = torch.device("cpu")


def _reference(stack: HookedStack, layers: torch.nn.ModuleList, hidden: torch.Tensor, owners: list[int]) -> torch.Tensor:
    """The plain layers, with each token's vector added to the stream after each steered layer."""
    residual = torch.zeros_like(hidden)
    steered = DIMS.steered()
    for index, layer in enumerate(layers):
        hidden, residual = layer(hidden, residual)
        if index in steered:
            added = [torch.from_numpy(stack.vectors[o][steered.index(index)]) if o >= 0 else torch.zeros(DIMS.hidden)
                     for o in owners]
            residual = residual + torch.stack(added)
    return hidden + residual


def test_idle_is_the_plain_stack_and_steering_adds_each_tokens_vectors() -> None:
    layers = build_layers(DIMS, CPU, torch.float32)
    stack = HookedStack(DIMS, layers, CPU, torch.float32)
    hidden = torch.randn(5, DIMS.hidden)
    plain = run_stack(layers, hidden)
    stack.set_traffic(5, 0)
    assert torch.equal(run_stack(stack.layers, hidden), plain)
    owners = stack.set_traffic(5, 3)
    assert owners == [0, 1, 2, 0, 1] and DIMS.steered() == [0, 2, 3, 5]
    steered = run_stack(stack.layers, hidden)
    assert not torch.allclose(steered, plain)
    torch.testing.assert_close(steered, _reference(stack, layers, hidden, owners), rtol=1e-5, atol=1e-5)


def test_a_target_is_met_only_when_the_whole_interval_clears_it() -> None:
    assert verdict((0.996, 1.01), 0.995) == "met"
    assert verdict((0.95, 0.99), 0.995) == "missed"
    assert verdict((0.99, 1.01), 0.995) == "not resolved"
    ratios = [1.0, 0.97, 1.03, 1.01, 0.99, 1.02, 0.98, 1.0]
    low, high = median_interval(ratios)
    assert low <= 1.0 <= high and high - low < 0.06
