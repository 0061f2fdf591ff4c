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
        // The message is its lines up to the first blank one (a list of missing
        // arguments is indented below its first line); the usage block follows.
        let text = e.render().to_string();
        let message: Vec<&str> = text
            .lines()
            .map(str::trim)
            .take_while(|l| !l.is_empty())
            .collect();
        let message = message.join(" ");
        let message = if message.is_empty() {
            "invalid arguments"
        } else {
            &message
        };
        eprintln!("{program}: {message}");
        ExitCode::from(2)
    })
}
