"""Extract a steering vector from contrastive pairs by difference of means.

For each requested decoder layer L we read the residual stream after layer L (the output of
`model.model.layers[L]`, the same point steering adds to) for every positive and every
negative example, reduce it to one vector per example (the last token, or the mean over
tokens), and return mean(positive) - mean(negative). This is the simplest estimator of a
behaviour direction (Turner et al.'s ActAdd, Rimsky et al.'s CAA) and needs no training, so
a vector can be rebuilt byte-for-byte from its dataset.
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

from steer_serve.steering_vector import SteeringVector
from steer_serve.vector_formats import write_vector

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Position = Literal["last", "mean"]
POSITIONS: tuple[str, ...] = ("last", "mean")
METHOD = "difference_of_means"


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


def load_pairs(path: Path) -> list[ContrastivePair]:
    """Read a JSONL file of pairs (blank lines skipped); errors name the file and line."""
    pairs: list[ContrastivePair] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            pairs.append(ContrastivePair.model_validate(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path.name} line {number}: invalid JSON ({exc.msg})") from exc
        except ValidationError as exc:
            raise ValueError(f"{path.name} line {number}: invalid pair: {_short(exc)}") from exc
    if not pairs:
        raise ValueError(f"{path.name}: no pairs")
    return pairs


def _short(exc: ValidationError) -> str:
    """One-line summary of a pydantic error (the default message spans many lines)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'pair'}: {e['msg']}" for e in exc.errors())


def render(pair_side: str | list[ChatMessage], tokenizer: PreTrainedTokenizerBase) -> str:
    """Turn one side of a pair into the exact text the model reads.

    A chat that ends with an assistant turn is left open (`continue_final_message`), so the
    last token is the assistant's own words rather than the template's end-of-turn marker,
    which would be identical on both sides. Any other chat gets the generation prompt.
    """
    if isinstance(pair_side, str):
        return pair_side
    messages = [m.model_dump() for m in pair_side]
    ends_with_assistant = messages[-1]["role"] == "assistant"
    return tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=not ends_with_assistant,
        continue_final_message=ends_with_assistant,
    )


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


def _reduce(hidden: torch.Tensor, position: Position) -> np.ndarray:
    """One float64 vector for one example (batch of 1): last token or mean over tokens."""
    seq = hidden[0]
    chosen = seq[-1] if position == "last" else seq.mean(dim=0)
    return chosen.double().numpy()


def _activations(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str, layers: Sequence[int], position: Position
) -> dict[int, np.ndarray]:
    """Run one text (no padding, so no mask subtleties) and reduce each layer's output."""
    import torch

    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    if ids.shape[1] == 0:
        raise ValueError(f"text tokenises to nothing: {text!r}")
    with capture_layers(model, layers) as captured, torch.no_grad():
        model(input_ids=ids, use_cache=False)
    return {layer: _reduce(captured[layer], position) for layer in layers}


def _side_means(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sides: list[str], layers: Sequence[int], position: Position
) -> dict[int, np.ndarray]:
    """Mean activation per layer over texts, accumulated in float64 in a fixed order."""
    sums = {layer: np.zeros(model.config.hidden_size, dtype=np.float64) for layer in layers}
    for text in sides:
        for layer, vector in _activations(model, tokenizer, text, layers, position).items():
            sums[layer] += vector
    return {layer: total / len(sides) for layer, total in sums.items()}


def _validate_request(layers: Sequence[int], position: str, num_layers: int) -> list[int]:
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    if not layers:
        raise ValueError("at least one layer is required")
    bad = [layer for layer in layers if not 0 <= layer < num_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range for a model with {num_layers} layers")
    return sorted(set(layers))


def _pairs_digest(pairs: Sequence[ContrastivePair]) -> str:
    """Stable hash of in-memory pairs, so vectors built without a file still carry provenance."""
    canonical = "\n".join(json.dumps(p.model_dump(exclude_none=True), sort_keys=True) for p in pairs)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def extract_difference_of_means(
    model_dir: Path,
    pairs: Sequence[ContrastivePair],
    layers: list[int],
    position: str = "last",
    *,
    source: Path | None = None,
) -> SteeringVector:
    """mean(positive) - mean(negative) of each layer's output, one direction per layer.

    `source` is the dataset file the pairs came from; its name and sha256 go into the
    metadata. Metadata holds no timestamps, so the same inputs give the same file.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not pairs:
        raise ValueError("at least one contrastive pair is required")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chosen = _validate_request(layers, position, len(decoder_layers(model)))
    pos = _side_texts(pairs, tokenizer, positive=True)
    neg = _side_texts(pairs, tokenizer, positive=False)
    pos_mean = _side_means(model, tokenizer, pos, chosen, position)  # type: ignore[arg-type]
    neg_mean = _side_means(model, tokenizer, neg, chosen, position)  # type: ignore[arg-type]
    directions = {layer: (pos_mean[layer] - neg_mean[layer]).astype(np.float32) for layer in chosen}
    metadata = {
        "model": Path(model_dir).name,
        "hidden_size": str(model.config.hidden_size),
        "layers": ",".join(map(str, chosen)),
        "method": METHOD,
        "position": position,
        "dataset": source.name if source is not None else "<in-memory>",
        "dataset_sha256": _file_sha256(source) if source is not None else _pairs_digest(pairs),
        "num_pairs": str(len(pairs)),
    }
    return SteeringVector(directions=directions, metadata=metadata)


def _side_texts(pairs: Sequence[ContrastivePair], tokenizer: PreTrainedTokenizerBase, *, positive: bool) -> list[str]:
    """Rendered texts of one side of every pair, in dataset order."""
    texts = []
    for pair in pairs:
        if pair.is_chat:
            side = pair.positive_messages if positive else pair.negative_messages
        else:
            side = pair.positive if positive else pair.negative
        texts.append(render(side, tokenizer))  # type: ignore[arg-type]
    return texts


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def extract_to_file(
    model_dir: Path,
    pairs_path: Path,
    layers: list[int],
    out_path: Path,
    position: str = "last",
) -> SteeringVector:
    """Load pairs, extract, and write the vector (.safetensors or .gguf by suffix)."""
    pairs = load_pairs(pairs_path)
    vector = extract_difference_of_means(model_dir, pairs, layers, position, source=pairs_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_vector(vector, out_path)
    return vector
