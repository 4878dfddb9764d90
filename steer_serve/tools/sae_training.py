"""Train a TopK sparse autoencoder on one layer's residual stream of a local HF model, offline.

Text comes from what is on disk: the shipped datasets (chats rendered with the model's own
template) and the docstrings of Python's standard library (read with `ast`, nothing imported).
Activations are the output of decoder layer L (the point steer-serve edits), excluding each
text's first token (its attention-sink activation is orders of magnitude larger than the rest).
The SAE is TopK (Gao et al. 2024; SAELens `architecture: topk`): no sparsity penalty to tune,
decoder rows kept at unit norm, b_dec initialised at the mean activation. Everything is seeded,
so the same command on the same machine gives the same file.
"""

from __future__ import annotations

import ast
import json
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steer_serve.tools.activations import capture_layers, load_model, load_pairs, load_texts, render, token_ids
from steer_serve.library.sparse_autoencoder import SparseAutoencoder

MAX_TOKENS_PER_TEXT = 128
MIN_DOCSTRING_CHARS = 200


@dataclass(frozen=True)
class TrainingReport:
    """Quality on held-out tokens, as SAE papers report it."""

    tokens_train: int
    tokens_heldout: int
    fvu: float  # fraction of variance unexplained: |x - x_hat|^2 / |x - mean|^2
    l0: float  # mean number of active features per token
    dead_fraction: float  # features that never fire on the held-out tokens
    steps: int

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def dataset_texts(dataset_dir: Path, tokenizer) -> list[tuple[str, str]]:  # noqa: ANN001
    """(file stem, text) for every example of the shipped datasets, rendered as the model reads it,
    in sorted file order; a contrastive pair gives its positive side, then its negative side."""
    texts: list[tuple[str, str]] = []
    for path in sorted(dataset_dir.glob("*.jsonl")):
        first = json.loads(path.read_text().splitlines()[0])
        if "positive" in first or "positive_messages" in first:
            texts += [(path.stem, render(pair.side(side), tokenizer)) for pair in load_pairs(path) for side in (True, False)]
        elif "text" in first or "messages" in first:
            texts += [(path.stem, render(example.content, tokenizer)) for example in load_texts(path)]
    return texts


def stdlib_docstrings(limit: int) -> Iterator[str]:
    """Docstrings of the standard library's modules, classes and functions, parsed, not imported."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = 0
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in [tree, *ast.walk(tree)]:
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= MIN_DOCSTRING_CHARS:
                    yield doc
                    found += 1
                    if found >= limit:
                        return


def collect(model_dir: Path, layer: int, texts: list[str]) -> tuple[np.ndarray, list[tuple[int, int]], list[list[int]]]:
    """Activations [N, D] of layer `layer` (first token of each text left out), where each row came
    from (text index, position), and each text's token ids."""
    import torch

    model, tokenizer = load_model(model_dir)
    model.model.layers = model.model.layers[: layer + 1]  # nothing after layer L is needed
    rows, origin, ids_of = [], [], []
    for index, text in enumerate(texts):
        ids = token_ids(tokenizer, text)[:, :MAX_TOKENS_PER_TEXT]
        with capture_layers(model, [layer]) as captured, torch.no_grad():
            model.model(input_ids=ids, use_cache=False)
        rows.append(captured[layer][0, 1:].numpy())
        origin += [(index, position) for position in range(1, ids.shape[1])]
        ids_of.append(ids[0].tolist())
    return np.concatenate(rows).astype(np.float32), origin, ids_of


def train_topk(acts: np.ndarray, width: int, k: int, steps: int, seed: int, layer: int,
               batch: int = 1024, lr: float = 4e-4) -> SparseAutoencoder:
    """Adam on the reconstruction MSE of a TopK SAE; decoder rows renormalised after each step."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(acts)  # [N, D]
    d_in = x_all.shape[1]
    w_dec = torch.randn(width, d_in, generator=generator)
    w_dec = torch.nn.Parameter(w_dec / w_dec.norm(dim=1, keepdim=True))  # [F, D]
    w_enc = torch.nn.Parameter(w_dec.detach().T.clone())  # [D, F]
    b_enc = torch.nn.Parameter(torch.zeros(width))
    b_dec = torch.nn.Parameter(x_all.mean(dim=0).clone())
    optimiser = torch.optim.Adam([w_enc, w_dec, b_enc, b_dec], lr=lr)
    for _ in range(steps):
        x = x_all[torch.randint(0, x_all.shape[0], (batch,), generator=generator)]  # [B, D]
        pre = (x - b_dec) @ w_enc + b_enc  # [B, F]
        top = pre.topk(k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))  # [B, F]
        loss = ((f @ w_dec + b_dec - x) ** 2).sum(dim=-1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            w_dec /= w_dec.norm(dim=1, keepdim=True)
    as_np = lambda p: p.detach().numpy().astype(np.float32)  # noqa: E731
    return SparseAutoencoder(layer=layer, architecture="topk", W_enc=as_np(w_enc), W_dec=as_np(w_dec),
                             b_enc=as_np(b_enc), b_dec=as_np(b_dec), k=k)


def evaluate(sae: SparseAutoencoder, heldout: np.ndarray, tokens_train: int, steps: int) -> TrainingReport:
    features = sae.encode(heldout)  # [N, F]
    residual = heldout - sae.decode(features)
    fvu = float((residual ** 2).sum() / ((heldout - heldout.mean(axis=0)) ** 2).sum())
    return TrainingReport(tokens_train, len(heldout), fvu, float((features > 0).sum(axis=1).mean()),
                          float(((features > 0).sum(axis=0) == 0).mean()), steps)


def top_tokens(sae: SparseAutoencoder, acts: np.ndarray, origin: list[tuple[int, int]], ids_of: list[list[int]],
               tokenizer, features: list[int], per_feature: int = 5) -> dict[int, list[tuple[float, str]]]:  # noqa: ANN001
    """For each feature, the tokens (with 3 tokens of left context) that activate it most."""
    acts_f = sae.encode(acts)[:, features]  # [N, len(features)]
    found: dict[int, list[tuple[float, str]]] = {}
    for column, feature in enumerate(features):
        best = np.argsort(-acts_f[:, column])[:per_feature]
        found[feature] = []
        for row in best:
            text, position = origin[row]
            context = tokenizer.decode(ids_of[text][max(0, position - 3): position])
            token = tokenizer.decode(ids_of[text][position: position + 1])
            found[feature].append((float(acts_f[row, column]), f"{context}[{token}]"))
    return found
