"""`steer-serve` command line: serve (vLLM's OpenAI server with the plugin), extract (HF or --server),
experts, evaluate, ab report, observe trace, default-model."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from steer_serve.default_model import DEFAULT_MODEL_NAME, default_model_dir
from steer_serve_vllm.names import VLLM_PLUGINS  # a vLLM-free module: the names our plugins register under

if TYPE_CHECKING:  # imported late at run time: `serve` must stay light
    from steer_serve.experiments.store import ExperimentStore
    from steer_serve.tools.observe_client import ObserveClient

_VLLM_ENTRY = "vllm.entrypoints.launchers.api_server.entry"
_MULTI_API_ENTRY = "steer_serve_vllm.api.multi_api_entry"  # vLLM's `serve` path: the only one that honours --api-server-count
DEFAULT_CPU_KVCACHE_GIB = "4"


def take_positional_model(args: argparse.Namespace, passthrough: list[str]) -> list[str]:
    """`steer-serve serve MODEL ...` as `vllm serve MODEL ...`: a leading word that is no flag's value
    is the model (args.model is set, the rest returned). Passed on, vLLM's launcher would ignore it
    and serve the default model instead."""
    if not passthrough or passthrough[0].startswith("-"):
        return passthrough
    if args.model is not None:
        raise ValueError(f"the model is given twice: --model {args.model} and {passthrough[0]}")
    args.model = passthrough[0]
    return passthrough[1:]


def serve_command(args: argparse.Namespace, passthrough: list[str]) -> list[str]:
    """The vLLM server command line for these arguments (model resolved, flags passed on)."""
    if args.model is None:
        model = str(default_model_dir())
        passthrough = ["--served-model-name", DEFAULT_MODEL_NAME, *passthrough]
    else:
        model = args.model
    entry = _MULTI_API_ENTRY if _api_server_count(passthrough) > 1 else _VLLM_ENTRY
    return [sys.executable, "-m", entry, "--model", model, "--host", args.host, "--port", str(args.port), *passthrough]


def _has_flag(passthrough: list[str], flag: str) -> bool:
    return any(item == flag or item.startswith(flag + "=") for item in passthrough)


def _api_server_count(passthrough: list[str]) -> int:
    for index, flag in enumerate(passthrough):
        if flag.startswith("--api-server-count="):
            return int(flag.split("=", 1)[1])
        if flag == "--api-server-count" and index + 1 < len(passthrough):
            return int(passthrough[index + 1])
    return 1


def serve_environment(args: argparse.Namespace, passthrough: list[str] = ()) -> dict[str, str]:
    """Environment for the server: our plugins allow-listed, our settings as STEER_SERVE_*."""
    env = dict(os.environ)
    env["VLLM_PLUGINS"] = VLLM_PLUGINS
    env.setdefault("HF_HUB_OFFLINE", "1")  # local models only: nothing is downloaded at run time
    # Steering patches vLLM's V1 model runner; on GPU vLLM 0.32 would otherwise pick Model Runner V2.
    env["VLLM_USE_V2_MODEL_RUNNER"] = "0"
    # On CPU, vLLM otherwise reserves 92% of RAM and refuses to start when anything else runs. Not
    # with --kv-cache-memory-bytes: vLLM's CPU platform lets this legacy variable override that flag.
    if not _has_flag(passthrough, "--kv-cache-memory-bytes"):
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_CPU_KVCACHE_GIB)
    if args.vector_dir is not None:
        env["STEER_SERVE_VECTOR_DIR"] = str(Path(args.vector_dir).resolve())
    if args.preset_dir is not None:
        env["STEER_SERVE_PRESET_DIR"] = str(Path(args.preset_dir).resolve())
    if args.sae_dir is not None:
        env["STEER_SERVE_SAE_DIR"] = str(Path(args.sae_dir).resolve())
    if args.experiments is not None:
        env["STEER_SERVE_EXPERIMENTS_DIR"] = str(Path(args.experiments).resolve())
    if args.experiments_db is not None:
        env["STEER_SERVE_EXPERIMENTS_DB"] = args.experiments_db
    if args.admin_key is not None:
        env["STEER_SERVE_ADMIN_KEY"] = args.admin_key
    if args.max_dose is not None:
        env["STEER_SERVE_MAX_DOSE"] = str(args.max_dose)
    if args.steering_memory is not None:
        env["STEER_SERVE_STEERING_MEMORY"] = str(args.steering_memory)
    if args.observe_memory is not None:
        env["STEER_SERVE_OBSERVE_MEMORY"] = str(args.observe_memory)
    if args.steering_slots is not None:
        env["STEER_SERVE_STEERING_SLOTS"] = str(args.steering_slots)
    if args.topk_clamp_saes is not None:
        env["STEER_SERVE_TOPK_CLAMP_SAES"] = json.dumps(args.topk_clamp_saes)
    if args.steering_projections is not None:
        env["STEER_SERVE_STEERING_PROJECTIONS"] = str(args.steering_projections)
    if args.head_sites is not None:
        env["STEER_SERVE_HEAD_SITES"] = str(args.head_sites).lower()
    if args.expert_sites is not None:
        env["STEER_SERVE_EXPERT_SITES"] = str(args.expert_sites).lower()
    if args.policy is not None:
        env["STEER_SERVE_POLICY_FILE"] = str(Path(args.policy).resolve())
    if args.probes is not None:
        env["STEER_SERVE_PROBES_FILE"] = str(Path(args.probes).resolve())
    return env


def _run_serve(args: argparse.Namespace, passthrough: list[str]) -> int:
    try:
        passthrough = take_positional_model(args, passthrough)
    except ValueError as exc:
        print(f"steer-serve: {exc}", file=sys.stderr)
        return 2
    if args.experiments_db is not None:
        from steer_serve.experiments.store import database_url

        try:
            database_url(args.experiments_db, None)
        except ValueError as exc:
            print(f"steer-serve: {exc}", file=sys.stderr)
            return 2
    if args.experiments is not None:
        from steer_serve.experiments.config import ExperimentConfigError, load_experiments

        try:  # the schema check is cheap: fail before vLLM spends a minute starting
            load_experiments(Path(args.experiments))
        except ExperimentConfigError as exc:
            print(f"steer-serve: {exc}", file=sys.stderr)
            return 2
    if args.probes is not None:
        from steer_serve.request.observe_spec import read_server_probes

        try:
            read_server_probes(Path(args.probes))
        except ValueError as exc:
            print(f"steer-serve: {exc}", file=sys.stderr)
            return 2
    if args.policy is not None:
        from steer_serve.policy.loader import PolicyError, read_policy

        try:  # the schema check too; names are checked against the library once the model is known
            read_policy(Path(args.policy))
        except PolicyError as exc:
            print(f"steer-serve: {exc}", file=sys.stderr)
            return 2
    command = serve_command(args, passthrough)
    print("steer-serve: " + " ".join(command), file=sys.stderr, flush=True)
    os.execve(command[0], command, serve_environment(args, passthrough))
    return 0  # not reached


def _run_default_model(args: argparse.Namespace, passthrough: list[str]) -> int:
    print(default_model_dir())
    return 0


def parse_layers(text: str) -> list[int]:
    """'6-14,20' -> [6, 7, ..., 14, 20]."""
    layers: list[int] = []
    for part in text.split(","):
        start, _, end = part.strip().partition("-")
        layers += range(int(start), int(end or start) + 1)
    return layers


def _run_extract(args: argparse.Namespace, passthrough: list[str]) -> int:
    from functools import partial

    from steer_serve.tools.extraction import extract_to_file
    from steer_serve.tools.observe_client import ObserveClient, ServerError
    from steer_serve.tools.server_extraction import extract_via_server

    if (args.method == "mean_centred") != (args.neutral is not None):
        print("steer-serve: --neutral is required with --method mean_centred and only used by it", file=sys.stderr)
        return 2
    server = ObserveClient(args.server, api_key=args.api_key, concurrency=args.concurrency) if args.server else None
    try:
        model = _local_model(args.model, server)
        vector = extract_to_file(model, Path(args.pairs), parse_layers(args.layers), Path(args.out), args.position,
                                 method=args.method, neutral_path=Path(args.neutral) if args.neutral else None,
                                 extractor=partial(extract_via_server, server) if server else None)
    except (ServerError, ValueError) as exc:
        print(f"steer-serve: {exc}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.close()
    print(f"wrote {args.out}: layers {vector.layers}, dim {vector.dim}, sha256 {vector.content_sha256()}")
    return 0


def _local_model(model: str | None, server: ObserveClient | None) -> Path:
    """--model, else the directory the server loaded its model from (when it is on this machine),
    else the default model: the tokenizer and config the client needs."""
    if model is not None:
        return Path(model)
    if server is not None and Path(server.served_model().root).is_dir():
        return Path(server.served_model().root)
    return default_model_dir()


def _run_experts(args: argparse.Namespace, passthrough: list[str]) -> int:
    from steer_serve.tools.expert_discovery import discover, ranking_markdown, write_discovery

    out = Path(args.out)
    model = Path(args.model) if args.model else default_model_dir()
    try:
        found = discover(model, Path(args.behaviour), Path(args.neutral), args.top_k, args.mode, name=out.stem)
    except ValueError as exc:
        print(f"steer-serve: {exc}", file=sys.stderr)
        return 2
    table = write_discovery(found, out)
    print(ranking_markdown(found))
    print(f"wrote {out} ({args.mode} {found.selected}) and {table}", file=sys.stderr)
    return 0


def _run_evaluate(args: argparse.Namespace, passthrough: list[str]) -> int:
    from steer_serve.tools.effect_report import evaluate, find_vector, render_markdown, write_report
    from steer_serve.settings import REPO_CONFIGS

    vector_dir = Path(args.vector_dir) if args.vector_dir else REPO_CONFIGS / "vectors"
    try:
        scales = [float(s) for s in args.scales.split(",")]
        name, vector = find_vector(args.vector, vector_dir)
        model = Path(args.model) if args.model else default_model_dir()
        layers = parse_layers(args.layers) if args.layers else None
        triples = Path(args.triples) if args.triples else REPO_CONFIGS / "datasets" / "gloomy_eval.jsonl"
        neutral = Path(args.neutral) if args.neutral else REPO_CONFIGS / "datasets" / "neutral.jsonl"
        report = evaluate(model, name, vector, scales, layers, triples, neutral)
    except ValueError as exc:
        print(f"steer-serve: {exc}", file=sys.stderr)
        return 2
    paths = write_report(report, Path(args.out))
    print(render_markdown(report))
    print("wrote " + ", ".join(map(str, paths)), file=sys.stderr)
    return 0


def _ab_store(args: argparse.Namespace) -> ExperimentStore:
    from steer_serve.experiments.store import ExperimentStore, database_url

    return ExperimentStore(database_url(args.experiments_db, Path(args.experiments) / "experiments.db"))


def _run_ab_report(args: argparse.Namespace, passthrough: list[str]) -> int:
    from steer_serve.experiments.config import ExperimentConfigError, load_experiment
    from steer_serve.experiments.report import write_report
    from steer_serve.experiments.results import compute_results
    from steer_serve.experiments.store import StoreUnavailable

    try:
        config = load_experiment(_experiment_file(Path(args.experiments), args.key))
        store = _ab_store(args)
        store.migrate()  # a database last written by an older version gets its roll-ups first
        results = compute_results(config, store, args.version)
    except (ExperimentConfigError, StoreUnavailable, ValueError) as exc:
        print(f"steer-serve: {exc}", file=sys.stderr)
        return 2
    markdown = write_report(results, Path(args.out) if args.out else None)
    print(markdown)
    if args.out:
        print(f"wrote {Path(args.out) / args.key}.md, .json and .png", file=sys.stderr)
    return 0


def _experiment_file(directory: Path, key: str) -> Path:
    from steer_serve.experiments.config import ExperimentConfigError

    for suffix in (".yaml", ".yml"):
        if (directory / f"{key}{suffix}").exists():
            return directory / f"{key}{suffix}"
    raise ExperimentConfigError(f"no experiment {key!r} in {directory}")


def _run_ab_import(args: argparse.Namespace, passthrough: list[str]) -> int:
    from steer_serve.experiments.store import StoreUnavailable
    from steer_serve.experiments.transfer import import_logs

    exposures = Path(args.exposure_log) if args.exposure_log else Path(args.experiments) / "exposures.jsonl"
    feedback = Path(args.feedback_log) if args.feedback_log else exposures.with_name("feedback.jsonl")
    try:
        store = _ab_store(args)
        counts = import_logs(store, exposures, feedback)
    except (StoreUnavailable, ValueError) as exc:
        print(f"steer-serve: {exc}", file=sys.stderr)
        return 2
    print(f"{store.display_url}: exposures {counts.exposures_new} new of {counts.exposures_read}, "
          f"feedback {counts.feedback_new} new of {counts.feedback_read}, {counts.skipped} invalid lines skipped")
    return 0


def _run_ab_export(args: argparse.Namespace, passthrough: list[str]) -> int:
    from steer_serve.experiments.store import StoreUnavailable
    from steer_serve.experiments.transfer import export_tables

    try:
        paths = export_tables(_ab_store(args), Path(args.out), args.format)
    except (StoreUnavailable, ValueError) as exc:
        print(f"steer-serve: {exc}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def _run_loadtest(args: argparse.Namespace, passthrough: list[str]) -> int:
    from steer_serve.loadtest.command import run

    return run(args)


def _run_observe_trace(args: argparse.Namespace, passthrough: list[str]) -> int:
    import json

    from steer_serve.tools.observation import ObservationError, parse_observation
    from steer_serve.tools.observe_client import ObserveClient, ServerError
    from steer_serve.tools.probe_trace import Trace, parse_probe, plot_trace, probe_prompt

    if (args.response is None) == (args.server is None):
        print("steer-serve: give exactly one of --server (probe a prompt now) or --response (a saved body)",
              file=sys.stderr)
        return 2
    try:
        if args.response is not None:
            body = json.loads(Path(args.response).read_text())
            trace = Trace(parse_observation(body), None, body)
        else:
            if not args.probe or args.prompt is None:
                raise ValueError("--server needs --prompt and at least one --probe NAME:VECTOR:LAYER")
            from transformers import AutoTokenizer

            with ObserveClient(args.server, api_key=args.api_key) as client:
                tokenizer = AutoTokenizer.from_pretrained(_local_model(args.model, client))
                steering = json.loads(args.steering) if args.steering else None
                trace = probe_prompt(client, tokenizer, args.prompt, [parse_probe(p) for p in args.probe],
                                     chat=args.chat, max_tokens=args.max_tokens, cosine=args.cosine,
                                     steering=steering)
        plot_trace(trace.observation, Path(args.out), trace.tokens, title=args.title or "")
    except (ServerError, ObservationError, ValueError, OSError) as exc:
        print(f"steer-serve: {exc}", file=sys.stderr)
        return 2
    if args.save_json:
        Path(args.save_json).write_text(json.dumps(trace.body, indent=1))
    for probe in trace.observation.probes:
        values = probe.projection or [float("nan")]
        print(f"{probe.name} (layer {probe.layer}): {len(values)} positions, mean {sum(values) / len(values):+.4f}, "
              f"min {min(values):+.4f}, max {max(values):+.4f}")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _run_sae_top_features(args: argparse.Namespace, passthrough: list[str]) -> int:
    from steer_serve.settings import REPO_CONFIGS
    from steer_serve.tools.sae_top_features import render_table, sae_from_library, top_features

    try:
        sae = sae_from_library(Path(args.sae_dir) if args.sae_dir else REPO_CONFIGS / "saes", args.sae)
        model = Path(args.model) if args.model else default_model_dir()
        hits = top_features(model, sae, args.text, args.top)
    except ValueError as exc:
        print(f"steer-serve: {exc}", file=sys.stderr)
        return 2
    print(render_table(hits, args.sae, sae.layer))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steer-serve", description=__doc__, allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="start the OpenAI-compatible server with per-request steering", allow_abbrev=False,
        description="Unrecognised flags (--dtype, --enforce-eager, --max-num-seqs, ...) go to vLLM.",
    )
    serve.add_argument("--model", default=None, help=f"local HF model directory (default: {DEFAULT_MODEL_NAME}); "
                       "or give it first, as with `vllm serve MODEL`")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--vector-dir", default=None, help="steering vector library (default: configs/vectors)")
    serve.add_argument("--preset-dir", default=None, help="steering presets, YAML/JSON files (default: configs/presets)")
    serve.add_argument("--sae-dir", default=None, help="SAE library (default: configs/saes)")
    serve.add_argument("--experiments", default=None, help="directory of A/B experiment YAML files")
    serve.add_argument("--experiments-db", default=None,
                       help="experiment store: postgresql://user:pass@host/db (replicas share it) or sqlite:///FILE "
                            "(default: <experiments>/experiments.db)")
    serve.add_argument("--admin-key", default=None,
                       help="bearer key for admin routes: experiments, vector/preset changes (or env STEER_SERVE_ADMIN_KEY)")
    serve.add_argument("--max-dose", type=float, default=None,
                       help="dose guardrail: clip each token's added vector to this fraction of the layer output's norm")
    serve.add_argument("--steering-memory", type=float, default=None,
                       help="MiB per engine worker for steering vectors (default 32); steered requests beyond it wait")
    serve.add_argument("--observe-memory", type=float, default=None,
                       help="MiB per engine worker for observation results (default 64; formula in "
                            "docs/performance.md); observed requests beyond it get an explicit error in `observe`")
    serve.add_argument("--steering-slots", type=int, default=None,
                       help="distinct steering configurations per worker (default 256, at most --max-num-seqs); "
                            "more wait")
    serve.add_argument("--steering-projections", type=int, default=None, choices=range(1, 17), metavar="K",
                       help="ablate/clamp/SAE feature clamp edits allowed per layer and token phase (default 2, "
                            "at most 16); each costs compute on every layer and step under torch.compile")
    serve.add_argument("--topk-clamp-saes", nargs="+", default=None, metavar="NAME",
                       help="TopK SAEs (names in --sae-dir) whose features may be clamped: each worker holds their "
                            "full encoders (d_in x d_sae each) and evaluates them at their layer every step")
    serve.add_argument("--head-sites", action=argparse.BooleanOptionalAction, default=None,
                       help="--no-head-sites: no head-scaling site on any layer (`heads` edits are 400s); an "
                            "unsteered compiled step then calls one op per layer instead of two (default: installed)")
    serve.add_argument("--expert-sites", action=argparse.BooleanOptionalAction, default=None,
                       help="--no-expert-sites: no router site on MoE layers (`experts` edits are 400s; "
                            "default: installed)")
    serve.add_argument("--policy", default=None,
                       help="steering policy YAML: per caller (--api-key, by sha256) what may be steered")
    serve.add_argument("--probes", default=None,
                       help="server probes YAML/JSON (name, vector, layer): observed on every completion request, "
                            "mean projection per request on /metrics (steer_serve:probe_mean_projection)")
    serve.set_defaults(handler=_run_serve)

    extract = commands.add_parser("extract", help="steering vector from contrastive pairs (JSONL) on a model's activations")
    extract.add_argument("--method", choices=["diff_means", "mean_centred", "pca"], default="diff_means",
                         help="diff_means: mean(pos)-mean(neg); mean_centred: mean(pos)-mean(neutral); "
                              "pca: first principal component of pos-neg differences (unit norm)")
    extract.add_argument("--neutral", default=None, help="JSONL of neutral texts/chats (text or messages), for mean_centred")
    extract.add_argument("--pairs", required=True, help="JSONL of contrastive pairs (see configs/datasets/)")
    extract.add_argument("--layers", required=True, help="decoder layers, e.g. 6-14 or 8,10,12")
    extract.add_argument("--out", required=True, help="output .safetensors or .gguf (name = file stem)")
    extract.add_argument("--position", choices=["last", "mean"], default="last", help="token position(s) read")
    extract.add_argument("--model", default=None,
                         help=f"HF model directory (default: the server's model directory if local, else {DEFAULT_MODEL_NAME}); "
                              "with --server only its tokenizer, chat template and config are read")
    extract.add_argument("--server", default=None,
                         help="URL of a running steer-serve: read activations through its observe.capture instead of "
                              "running the HF model here")
    extract.add_argument("--api-key", default=None, help="bearer key for --server")
    extract.add_argument("--concurrency", type=int, default=4, help="requests in flight at once with --server")
    extract.set_defaults(handler=_run_extract)

    experts = commands.add_parser("experts", help="MoE: rank experts by routing frequency (behaviour - neutral), write a preset")
    experts.add_argument("--model", default=None, help="HF Mixture-of-Experts model directory")
    experts.add_argument("--behaviour", required=True, help="JSONL of texts/chats (text or messages) showing the behaviour")
    experts.add_argument("--neutral", required=True, help="JSONL of texts/chats (text or messages) without it")
    experts.add_argument("--top-k", type=int, default=4, help="how many (layer, expert) to put in the preset")
    experts.add_argument("--mode", choices=["disable", "force"], default="disable", help="what the preset does to them")
    experts.add_argument("--out", required=True, help="preset .json (name = file stem); the ranking goes to <stem>.ranking.md")
    experts.set_defaults(handler=_run_experts)

    evaluate = commands.add_parser("evaluate", help="effect report: behaviour effect and perplexity vs scale (md, JSON, PNG)")
    evaluate.add_argument("--vector", required=True, help="library name (in --vector-dir) or a vector file")
    evaluate.add_argument("--scales", default="0,0.2,0.4,0.6,0.8,1.0", help="comma-separated scales, e.g. 0,0.2,0.4")
    evaluate.add_argument("--layers", default=None, help="steered layers, e.g. 6-14 (default: all of the vector's)")
    evaluate.add_argument("--model", default=None, help=f"HF model directory (default: {DEFAULT_MODEL_NAME})")
    evaluate.add_argument("--vector-dir", default=None, help="vector library (default: configs/vectors)")
    evaluate.add_argument("--triples", default=None,
                          help="JSONL of {prompt, target, opposite} for the effect (default: configs/datasets/gloomy_eval.jsonl)")
    evaluate.add_argument("--neutral", default=None,
                          help="JSONL of texts/chats for perplexity (default: configs/datasets/neutral.jsonl)")
    evaluate.add_argument("--out", required=True, help="directory for NAME.md, NAME.json and NAME.png")
    evaluate.set_defaults(handler=_run_evaluate)

    ab = commands.add_parser("ab", help="A/B experiments").add_subparsers(dest="ab_command", required=True)
    store_help = "postgresql://... or sqlite:///FILE (default: <experiments>/experiments.db, as `serve`)"
    report = ab.add_parser("report", help="per-arm results of an experiment from the store (markdown, JSON, PNG)")
    report.add_argument("key", help="experiment key (its YAML file stem)")
    report.add_argument("--experiments", default="configs/experiments", help="experiments directory")
    report.add_argument("--experiments-db", default=None, help=store_help)
    report.add_argument("--version", type=int, default=None, help="experiment version (default: the file's)")
    report.add_argument("--out", default=None, help="also write KEY.md, KEY.json and KEY.png into this directory")
    report.set_defaults(handler=_run_ab_report)
    load = ab.add_parser("import", help="load exposure/feedback JSONL logs into the store (idempotent)")
    load.add_argument("--experiments", default="configs/experiments", help="experiments directory")
    load.add_argument("--experiments-db", default=None, help=store_help)
    load.add_argument("--exposure-log", default=None, help="default: <experiments>/exposures.jsonl")
    load.add_argument("--feedback-log", default=None, help="default: feedback.jsonl next to the exposure log")
    load.set_defaults(handler=_run_ab_import)
    dump = ab.add_parser("export", help="write the exposures and feedback tables as JSONL or CSV files")
    dump.add_argument("--experiments", default="configs/experiments", help="experiments directory")
    dump.add_argument("--experiments-db", default=None, help=store_help)
    dump.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    dump.add_argument("--out", required=True, help="directory for exposures.<format> and feedback.<format>")
    dump.set_defaults(handler=_run_ab_export)

    loadtest = commands.add_parser("loadtest", help="load-test a running server with a scenario: latency, goodput, SLOs",
                                   allow_abbrev=False)
    from steer_serve.loadtest.command import add_arguments

    add_arguments(loadtest)
    loadtest.set_defaults(handler=_run_loadtest)

    sae = commands.add_parser("sae", help="sparse autoencoders").add_subparsers(dest="sae_command", required=True)
    top = sae.add_parser("top-features", help="which features of a library SAE fire on a text (HF model, offline)")
    top.add_argument("--sae", required=True, help="SAE name in the library")
    top.add_argument("--text", required=True, help="the text to encode (as the model reads it; no chat template)")
    top.add_argument("--top", type=int, default=10, help="how many features to list")
    top.add_argument("--sae-dir", default=None, help="SAE library (default: configs/saes)")
    top.add_argument("--model", default=None, help=f"HF model directory (default: {DEFAULT_MODEL_NAME})")
    top.set_defaults(handler=_run_sae_top_features)

    observe = commands.add_parser("observe", help="per-request observation of the residual stream on a running server")
    observe_commands = observe.add_subparsers(dest="observe_command", required=True)
    trace = observe_commands.add_parser("trace", help="per-token probe projections of one prompt, drawn as a PNG")
    trace.add_argument("--server", default=None, help="URL of a running steer-serve")
    trace.add_argument("--api-key", default=None, help="bearer key for --server")
    trace.add_argument("--probe", action="append", default=[],
                       help="NAME:VECTOR:LAYER (repeatable); VECTOR = a library name on the server or a local "
                            ".safetensors/.gguf file")
    trace.add_argument("--prompt", default=None, help="the prompt text")
    trace.add_argument("--chat", action="store_true", help="send the prompt as a user turn through the chat template")
    trace.add_argument("--max-tokens", type=int, default=16, help="tokens to generate (greedy); they are probed too")
    trace.add_argument("--cosine", action="store_true", help="also draw the cosine similarity")
    trace.add_argument("--steering", default=None,
                       help='a `steering` object (JSON) for the same request, e.g. '
                            '\'{"interventions": [{"type": "add", "vector": "gloomy", "scale": 0.6}]}\'; the probes see its edits')
    trace.add_argument("--model", default=None,
                       help="local model directory for the tokenizer (default: the server's, else the default model)")
    trace.add_argument("--response", default=None, help="draw a saved response body (JSON) instead of asking a server")
    trace.add_argument("--save-json", default=None, help="also write the response body here")
    trace.add_argument("--title", default=None, help="figure title")
    trace.add_argument("--out", required=True, help="PNG to write")
    trace.set_defaults(handler=_run_observe_trace)

    model = commands.add_parser("default-model", help="convert (once) and print the default model directory")
    model.set_defaults(handler=_run_default_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args, passthrough = build_parser().parse_known_args(argv)
    if passthrough and args.command != "serve":
        build_parser().error(f"unrecognized arguments: {' '.join(passthrough)}")
    return args.handler(args, passthrough)


if __name__ == "__main__":
    raise SystemExit(main())
