//! The `idledger` command. Parsing and dispatch live in [`idledger::cli`].

/// mimalloc: replay decodes on several threads and folds on one, so most allocations are
/// freed on another thread than made them; glibc's arenas contend there, mimalloc does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    idledger::cli::run()
}
