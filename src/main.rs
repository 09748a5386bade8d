//! The `idledger` command. Parsing and dispatch live in [`idledger::cli`].

fn main() -> std::process::ExitCode {
    idledger::cli::run()
}
