"""Session-wide fixtures: models are built once, servers start once per session and are shared.

Server fixtures are lazy: a test run that selects only unit tests starts no server. The tiny
Llama servers (eager, compiled, plain vLLM; ~1.5 GiB each) live for the whole session, since
several modules use each; the others are module-scoped, so that at most about five servers are
alive at once on a 24 GiB machine.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

from steer_serve.default_model import default_model_dir
from steer_serve.library.steering_vector import SteeringVector
from steer_serve.library.vector_formats import write_vector
from harness.hf_reference import HFReference
from harness.servers import ADMIN_KEY, SMOLLM2_KV_CACHE_BYTES, TINY_EAGER_PROJECTIONS, Server
from harness.steering_cases import tiny_library_directions
from harness.tiny_models import TINY_HIDDEN, TINY_LAYERS, build_tiny_llama, build_tiny_model

# The HF reference runs in this process next to vLLM servers whose workers keep a core busy;
# two OpenMP threads spinning against them make small forwards orders of magnitude slower.
torch.set_num_threads(1)

# `make test` runs two pytest-xdist workers on the 2-core CI machine: each worker's servers bind
# their OpenMP threads to its own core (a test that sets the binding itself, TP/PP/DP, keeps it).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...; unset without -n
if _WORKER and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(int(_WORKER.removeprefix("gw")) % (os.cpu_count() or 1))


@functools.cache
def _module_group(module: Path) -> str:
    """One group per module keeps module-scoped servers single; the modules using the compiled (or
    the plain-vLLM) tiny server share a group so that it starts once."""
    text = module.read_text()
    shared = [name for name in ("tiny_compiled_server", "tiny_plain_server") if name in text]
    return shared[0] if shared else str(module)


class _ModuleGroups:
    """Registered only when pytest-xdist is loaded (`-p no:xdist` keeps working)."""

    @staticmethod
    def pytest_xdist_make_scheduler(config: pytest.Config, log):
        """Under `-n`, xdist's LoadScope scheduling with our groups as scopes. (Its loadgroup mode
        does not work with pytest 9, which ignores the node id rewrite it relies on.)"""
        from xdist.scheduler import LoadScopeScheduling

        class ModuleGroupScheduling(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return _module_group(config.rootpath / nodeid.split("::", 1)[0])

        return ModuleGroupScheduling(config, log)


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_ModuleGroups(), "steer-serve-module-groups")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    return default_model_dir()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm2_dir)


@pytest.fixture(scope="session")
def tiny_vector_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A vector library for the tiny model: `tiny_a` on every layer, stored as safetensors."""
    directory = tmp_path_factory.mktemp("tiny-vectors")
    directions = tiny_library_directions(TINY_HIDDEN, TINY_LAYERS)
    write_vector(SteeringVector(directions, {"model": "tiny-llama"}), directory / "tiny_a.safetensors")
    return directory


TINY_SAES = (("jr", 1, "jumprelu", {}), ("std", 2, "standard", {}), ("tk", 2, "topk", {"k": 16}),
             ("rescaled", 3, "jumprelu", {"normalize": "constant_norm_rescale"}))


@pytest.fixture(scope="session")
def tiny_saes() -> dict:
    """Random SAEs for the tiny model (by name), one per architecture, and one that does not fit it."""
    from harness.saes import random_sae

    saes = {name: random_sae(name, layer, kind, TINY_HIDDEN, seed, **extra)
            for seed, (name, layer, kind, extra) in enumerate(TINY_SAES)}
    return saes | {"other_model": random_sae("other_model", 1, "standard", 64, 9)}


@pytest.fixture(scope="session")
def tiny_sae_dir(tmp_path_factory: pytest.TempPathFactory, tiny_saes) -> Path:
    from harness.saes import write_library

    return write_library(tmp_path_factory.mktemp("tiny-saes"), list(tiny_saes.values()))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path):
    """tiny_model(kind) -> the directory of that tiny random model, built once per session."""
    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            built[kind] = build_tiny_model(kind, tmp_path_factory.mktemp(kind), smollm2_dir)
        return built[kind]

    return get


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


def _serve(request: pytest.FixtureRequest, **kwargs) -> Server:
    server = Server(**kwargs)
    request.addfinalizer(server.stop)
    return server.wait_ready()


@pytest.fixture(scope="session")
def tiny_eager_server(request, tiny_llama_dir, tiny_vector_dir, tiny_sae_dir, log_dir) -> Server:
    # 8 projections per layer (eager: the projection code runs only in steps whose requests use it)
    return _serve(request, model=tiny_llama_dir, log_dir=log_dir, vector_dir=tiny_vector_dir, eager=True,
                  extra_args=["--sae-dir", str(tiny_sae_dir), "--steering-projections", str(TINY_EAGER_PROJECTIONS),
                              "--topk-clamp-saes", "tk"])


@pytest.fixture(scope="session")
def tiny_compiled_server(request, tiny_llama_dir, tiny_vector_dir, tiny_sae_dir, log_dir) -> Server:
    return _serve(request, model=tiny_llama_dir, log_dir=log_dir, vector_dir=tiny_vector_dir, eager=False,
                  extra_args=["--sae-dir", str(tiny_sae_dir), "--topk-clamp-saes", "tk"])


@pytest.fixture(scope="session")
def tiny_plain_server(request, tiny_llama_dir, log_dir) -> Server:
    """Plain vLLM, no plugin loaded: the baseline unsteered outputs must equal."""
    return _serve(request, model=tiny_llama_dir, log_dir=log_dir, plugin=False, eager=True)


@pytest.fixture(scope="module")
def smollm2_server(request, smollm2_dir, log_dir) -> Server:
    """The default model with the shipped vector library, eager: compiled mode is proven on the tiny
    models (same hooks, same graph capture); compiling SmolLM2's 30 layers costs ~4 min on 2 cores."""
    return _serve(request, model=smollm2_dir, log_dir=log_dir, eager=True, kv_cache_bytes=SMOLLM2_KV_CACHE_BYTES)


@pytest.fixture(scope="session")
def tiny_reference(tiny_llama_dir) -> HFReference:
    return HFReference(tiny_llama_dir)


@pytest.fixture(scope="session")
def smollm2_reference(smollm2_dir) -> HFReference:
    return HFReference(smollm2_dir)


@pytest.fixture(scope="session")
def experiments_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two running experiments for the tiny model: `a_session` keyed by a header, `tone` by `user`."""
    from harness.experiments import experiment, write_experiments

    treatment = [{"type": "add", "vector": "tiny_a", "scale": 4.0}]
    return write_experiments(
        tmp_path_factory.mktemp("experiments"),
        experiment("a_session", [{"name": "control", "weight": 1, "control": True},
                                 {"name": "steered", "weight": 1, "interventions": treatment}],
                   unit={"header": "x-session-id"}),
        experiment("tone", [{"name": "control", "weight": 2, "control": True},
                            {"name": "strong", "weight": 1, "interventions": treatment},
                            {"name": "inline", "weight": 1, "interventions": [
                                {"type": "add", "vector": [0.5] * TINY_HIDDEN, "layers": [1, 2], "scale": 2.0}]}]),
    )


@pytest.fixture(scope="module")
def tiny_experiment_server(request, tiny_llama_dir, tiny_vector_dir, experiments_dir, log_dir) -> Server:
    """The tiny model serving the experiments above, with an admin key (one server for all experiment e2e tests)."""
    return _serve(request, model=tiny_llama_dir, log_dir=log_dir, vector_dir=tiny_vector_dir, eager=True,
                  extra_args=["--experiments", str(experiments_dir), "--admin-key", ADMIN_KEY])


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (started on first use)."""
    from loadtests.postgres_server import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """An empty experiment database on each backend (PostgreSQL: a new database on the session server)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'experiments.db'}"
    return request.getfixturevalue("postgres").new_database()
