//! A small stderr logger for the `log` facade: quiet by default.
//!
//! The level comes from `-v` flags (`-v` info, `-vv` debug, `-vvv` trace) or, when
//! none are given, from `RUST_LOG` (`error`, `warn`, `info`, `debug`, `trace`). Each
//! line is `<program>: <LEVEL> <message>`, one event per line, so tools such as
//! fail2ban can match it.

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger {
    program: &'static str,
}

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("{}: {} {}", self.program, r.level(), r.args());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger; `verbosity` counts `-v` flags.
pub fn init(program: &'static str, verbosity: u8) {
    let level = match verbosity {
        0 => std::env::var("RUST_LOG")
            .ok()
            .and_then(|v| v.parse::<LevelFilter>().ok())
            .unwrap_or(LevelFilter::Warn),
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    let logger: &'static StderrLogger = Box::leak(Box::new(StderrLogger { program }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
