//! Command-line plumbing shared by the binaries.

use std::process::ExitCode;

/// Parses the command line; on `--help`/`--version` prints and exits 0, on misuse prints
/// a one-line `<program>: error: ...` and exits 2 (clap's own usage block is multi-line).
pub fn parse_args<T: clap::Parser>(program: &str) -> Result<T, ExitCode> {
    T::try_parse().map_err(|e| {
        if !e.use_stderr() {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        let text = e.render().to_string();
        eprintln!(
            "{program}: {}",
            text.lines().next().unwrap_or("invalid arguments")
        );
        ExitCode::from(2)
    })
}
