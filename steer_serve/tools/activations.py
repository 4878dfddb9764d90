"""Datasets and activation capture shared by extraction, expert discovery and effect reports.

Layer L is the OUTPUT of decoder layer L (0-based `model.model.layers[L]`): the residual stream
after it, the same point steering adds to. Texts run one at a time (no padding, so no attention
mask subtleties), in file order, so every statistic built on top is deterministic.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from steer_serve.request.errors import describe_validation_error

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Position = Literal["last", "mean"]
POSITIONS: tuple[str, ...] = ("last", "mean")


class ChatMessage(BaseModel):
    """One chat turn; rendered with the model's own chat template so extraction sees the
    same token layout the served model sees."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str


class ContrastivePair(BaseModel):
    """A positive and a negative example that differ (ideally) only in the behaviour.

    Exactly one form per pair: plain texts (`positive`/`negative`), fed to the model as is,
    or chats (`positive_messages`/`negative_messages`). Mixing forms inside a pair would make
    the two sides differ in layout as well as behaviour, so it is rejected.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    positive: str | None = None
    negative: str | None = None
    positive_messages: list[ChatMessage] | None = None
    negative_messages: list[ChatMessage] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> ContrastivePair:
        texts = (self.positive, self.negative)
        chats = (self.positive_messages, self.negative_messages)
        text_form = all(t is not None for t in texts) and all(c is None for c in chats)
        chat_form = all(c is not None for c in chats) and all(t is None for t in texts)
        if not (text_form or chat_form):
            raise ValueError(
                "give either both 'positive' and 'negative' (plain text) or both "
                "'positive_messages' and 'negative_messages' (chat), not a mix"
            )
        for side in (*texts, *chats):
            if side is not None and len(side) == 0:
                raise ValueError("positive and negative examples must not be empty")
        return self

    @property
    def is_chat(self) -> bool:
        return self.positive_messages is not None

    def side(self, positive: bool) -> str | list[ChatMessage]:
        if self.is_chat:
            return self.positive_messages if positive else self.negative_messages  # type: ignore[return-value]
        return self.positive if positive else self.negative  # type: ignore[return-value]


class TextExample(BaseModel):
    """One example of a plain text set (neutral sets, behaviour sets): `text` or `messages`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str | None = None
    messages: list[ChatMessage] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> TextExample:
        if (self.text is None) == (self.messages is None):
            raise ValueError("give exactly one of 'text' or 'messages'")
        if len(self.text if self.text is not None else self.messages or []) == 0:
            raise ValueError("example must not be empty")
        return self

    @property
    def content(self) -> str | list[ChatMessage]:
        return self.text if self.text is not None else self.messages  # type: ignore[return-value]


# One example as a dataset holds it: a plain text, or a chat rendered by the model's template.
Example = str | list[ChatMessage]


def _load_jsonl(path: Path, model: type[BaseModel], what: str) -> list[Any]:
    items: list[Any] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(model.model_validate(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path.name} line {number}: invalid JSON ({exc.msg})") from exc
        except ValidationError as exc:
            raise ValueError(f"{path.name} line {number}: invalid {what}: {describe_validation_error(exc, whole='line')}") from exc
    if not items:
        raise ValueError(f"{path.name}: no {what}s")
    return items


def load_pairs(path: Path) -> list[ContrastivePair]:
    """Read a JSONL file of pairs (blank lines skipped); errors name the file and line."""
    return _load_jsonl(path, ContrastivePair, "pair")


def load_texts(path: Path) -> list[TextExample]:
    """Read a JSONL file of `{"text": ...}` or `{"messages": [...]}` lines."""
    return _load_jsonl(path, TextExample, "example")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def items_digest(items: Sequence[BaseModel]) -> str:
    """Stable hash of in-memory examples, so vectors built without a file still carry provenance."""
    canonical = "\n".join(json.dumps(p.model_dump(exclude_none=True), sort_keys=True) for p in items)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def render(example: Example, tokenizer: PreTrainedTokenizerBase) -> str:
    """Turn one example into the exact text the model reads.

    A chat that ends with an assistant turn is left open (`continue_final_message`), so the
    last token is the assistant's own words rather than the template's end-of-turn marker,
    which would be identical on both sides. Any other chat gets the generation prompt.
    """
    if isinstance(example, str):
        return example
    messages = [m.model_dump() for m in example]
    ends_with_assistant = messages[-1]["role"] == "assistant"
    return tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=not ends_with_assistant,
        continue_final_message=ends_with_assistant,
    )


def token_id_list(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """The ids of an already rendered text; special tokens come from the template only. The server
    path sends these very ids, so both paths read the same tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"text tokenises to nothing: {text!r}")
    return list(ids)


def token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> torch.Tensor:
    """(1, seq) ids of an already rendered text, as a tensor for the HF model."""
    import torch

    return torch.tensor([token_id_list(tokenizer, text)])


def load_model(model_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """HF causal LM in float32, eval mode, and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The decoder layer list of a Llama-style HF causal LM (`model.model.layers`)."""
    try:
        return model.model.layers
    except AttributeError as exc:
        raise ValueError(f"{type(model).__name__} has no model.layers; not a Llama-style decoder") from exc


def layer_output(output: Any) -> torch.Tensor:
    """Hidden states from a decoder layer's output (a tensor, or a tuple led by it)."""
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def capture_layers(model: PreTrainedModel, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Forward hooks that store each listed layer's output (batch, seq, hidden) per forward."""
    stack = decoder_layers(model)
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for layer in layers:
        def hook(_module: Any, _inputs: Any, output: Any, layer: int = layer) -> None:
            captured[layer] = layer_output(output).detach()

        handles.append(stack[layer].register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def validate_layers(layers: Sequence[int], position: str, num_layers: int) -> list[int]:
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    if not layers:
        raise ValueError("at least one layer is required")
    bad = [layer for layer in layers if not 0 <= layer < num_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range for a model with {num_layers} layers")
    return sorted(set(layers))


def _reduce(hidden: torch.Tensor, position: str) -> np.ndarray:
    """One float64 vector for one example (batch of 1): last token or mean over tokens."""
    seq = hidden[0]
    chosen = seq[-1] if position == "last" else seq.mean(dim=0)
    return chosen.double().numpy()


def collect_activations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    layers: Sequence[int],
    position: str,
) -> dict[int, np.ndarray]:
    """Per layer, a float64 (len(texts), hidden) matrix: one reduced activation per text, in order."""
    import torch

    rows: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    for text in texts:
        with capture_layers(model, layers) as captured, torch.no_grad():
            model(input_ids=token_ids(tokenizer, text), use_cache=False)
        for layer in layers:
            rows[layer].append(_reduce(captured[layer], position))
    return {layer: np.stack(found) for layer, found in rows.items()}
