//! Loading `credentials.txt`: one `username password` pair per line.
//!
//! Fields are separated by white space; names and passwords are case-sensitive and
//! contain no white space. Blank lines and lines starting with `#` are ignored. A
//! malformed line or a duplicate username is an error naming the file and line, which
//! stops the server at start-up.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// One account as read from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub name: String,
    pub password: String,
}

/// Why the credentials file could not be used.
#[derive(Debug)]
pub enum CredentialsError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Malformed {
        path: PathBuf,
        line: usize,
        what: String,
    },
    Duplicate {
        path: PathBuf,
        line: usize,
        name: String,
        first: usize,
    },
    Empty {
        path: PathBuf,
    },
}

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialsError::Read { path, source } => {
                write!(f, "{}: cannot read: {source}", path.display())
            }
            CredentialsError::Malformed { path, line, what } => {
                write!(f, "{}:{line}: {what}", path.display())
            }
            CredentialsError::Duplicate {
                path,
                line,
                name,
                first,
            } => {
                write!(
                    f,
                    "{}:{line}: duplicate username `{name}` (first defined on line {first})",
                    path.display()
                )
            }
            CredentialsError::Empty { path } => {
                write!(f, "{}: no accounts defined", path.display())
            }
        }
    }
}

impl std::error::Error for CredentialsError {}

/// Reads and validates a credentials file.
pub fn load(path: &Path) -> Result<Vec<Credential>, CredentialsError> {
    let text = std::fs::read(path).map_err(|source| CredentialsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Parses credentials text; `path` only labels errors.
pub fn parse(path: &Path, text: &[u8]) -> Result<Vec<Credential>, CredentialsError> {
    let malformed = |line: usize, what: String| CredentialsError::Malformed {
        path: path.to_path_buf(),
        line,
        what,
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let line = std::str::from_utf8(raw)
            .map_err(|_| malformed(line_no, "not valid UTF-8".to_string()))?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != 2 {
            return Err(malformed(
                line_no,
                format!(
                    "expected `username password`, found {} field{}",
                    fields.len(),
                    if fields.len() == 1 { "" } else { "s" }
                ),
            ));
        }
        let (name, password) = (fields[0], fields[1]);
        if name.len() > 64 {
            return Err(malformed(
                line_no,
                format!("username `{name}` is longer than 64 bytes"),
            ));
        }
        if name.chars().any(|c| c.is_control()) {
            return Err(malformed(
                line_no,
                "username contains control characters".to_string(),
            ));
        }
        if let Some(&first) = seen.get(name) {
            return Err(CredentialsError::Duplicate {
                path: path.to_path_buf(),
                line: line_no,
                name: name.to_string(),
                first,
            });
        }
        seen.insert(name.to_string(), line_no);
        out.push(Credential {
            name: name.to_string(),
            password: password.to_string(),
        });
    }
    if out.is_empty() {
        return Err(CredentialsError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Vec<Credential>, String> {
        parse(Path::new("creds.txt"), text.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_pairs_comments_and_blank_lines() {
        let got = p("# users\nalice  pw1\n\n\tbob\tPW2  \r\n").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[1],
            Credential {
                name: "bob".into(),
                password: "PW2".into()
            }
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        assert_eq!(
            p("alice pw\nbob\n").unwrap_err(),
            "creds.txt:2: expected `username password`, found 1 field"
        );
        assert_eq!(
            p("alice pw x\n").unwrap_err(),
            "creds.txt:1: expected `username password`, found 3 fields"
        );
        assert_eq!(
            p("alice a\nbob b\nalice c\n").unwrap_err(),
            "creds.txt:3: duplicate username `alice` (first defined on line 1)"
        );
        assert_eq!(
            p("# nothing\n").unwrap_err(),
            "creds.txt: no accounts defined"
        );
        assert!(p("Alice a\nalice b\n").is_ok(), "names are case-sensitive");
    }
}
