//! `keygate`: create and hash keys, check configurations and explain verdicts, with the
//! filter's own core: every rule and message here is the one Envoy applies. The commands
//! are in `cli/`.

fn main() -> std::process::ExitCode {
    keygate_tools::cli::main()
}
