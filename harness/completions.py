"""Greedy completions over HTTP, returning token ids and their logprobs."""

from __future__ import annotations

from typing import Any

import httpx

from harness.hf_reference import Generation


def completion_body(model: str, prompt: list[int], max_tokens: int, steering: dict | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
        "logprobs": 1, "ignore_eos": True, "return_tokens_as_token_ids": True,
    }
    if steering is not None:
        body["steering"] = steering
    return body


def parse_generation(response: dict[str, Any]) -> Generation:
    logprobs = response["choices"][0]["logprobs"]
    tokens = [int(token.removeprefix("token_id:")) for token in logprobs["tokens"]]
    return Generation(tokens, [float(x) for x in logprobs["token_logprobs"]])


def greedy(client: httpx.Client, model: str, prompt: list[int], max_tokens: int, steering: dict | None = None) -> Generation:
    response = client.post("/v1/completions", json=completion_body(model, prompt, max_tokens, steering))
    assert response.status_code == 200, response.text
    return parse_generation(response.json())


async def agreedy(client: httpx.AsyncClient, model: str, prompt: list[int], max_tokens: int,
                  steering: dict | None = None) -> Generation:
    response = await client.post("/v1/completions", json=completion_body(model, prompt, max_tokens, steering))
    assert response.status_code == 200, response.text
    return parse_generation(response.json())


def assert_same_generation(actual: Generation, expected: Generation, atol: float = 1e-4) -> None:
    assert actual.tokens == expected.tokens
    worst = max(abs(a - b) for a, b in zip(actual.logprobs, expected.logprobs))
    assert worst <= atol, f"max |dlogprob| {worst:.3g} > {atol}"


def assert_steering_visible(steered: Generation, unsteered: Generation, min_effect: float = 1e-2) -> None:
    """Guard against vacuous cases: the reference must show the steering's effect."""
    if steered.tokens != unsteered.tokens:
        return
    effect = max(abs(a - b) for a, b in zip(steered.logprobs, unsteered.logprobs))
    assert effect > min_effect, f"case too weak to show that steering happened (max |dlogprob| {effect:.2g})"
