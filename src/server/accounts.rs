//! Loading `credentials.txt`: one `username password` pair per line.
//!
//! Fields are separated by white space; names and passwords are case-sensitive and
//! contain no white space. Blank lines and lines starting with `#` are ignored. A
//! malformed line or a duplicate username is an error naming the file and line, which
//! stops the server at start-up (and makes a SIGHUP reload keep the old accounts).
//!
//! A password is either plain text or a hash in the standard string formats: argon2
//! (PHC, `$argon2id$v=19$m=...,t=...,p=...$salt$hash`) or bcrypt (`$2b$12$...`).
//! `natterd hash-password` prints an argon2id hash. Verifying a hash takes tens of
//! milliseconds by design, so the server runs [`verify`] off its event loop.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// One account as read from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The user name.
    pub name: String,
    /// The password: plain text, or an argon2/bcrypt hash.
    pub password: String,
}

/// Why the credentials file could not be used.
#[derive(Debug)]
pub enum CredentialsError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `username password`.
    Malformed {
        /// The file.
        path: PathBuf,
        /// The line number (from 1).
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// A user name appears twice.
    Duplicate {
        /// The file.
        path: PathBuf,
        /// The line of the second one.
        line: usize,
        /// The name.
        name: String,
        /// The line of the first one.
        first: usize,
    },
    /// The file lists no account.
    Empty {
        /// The file.
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
        if let Err(what) = check_secret(password) {
            return Err(malformed(line_no, what));
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

/// Whether a stored password is a hash (argon2 or bcrypt) rather than plain text.
pub fn is_hashed(secret: &str) -> bool {
    secret.starts_with("$argon2") || is_bcrypt(secret)
}

fn is_bcrypt(secret: &str) -> bool {
    ["$2a$", "$2b$", "$2x$", "$2y$"]
        .iter()
        .any(|p| secret.starts_with(p))
}

/// Checks that a hashed password parses, so a typo is caught at load, not at login.
fn check_secret(secret: &str) -> Result<(), String> {
    if secret.starts_with("$argon2") {
        argon2::password_hash::phc::PasswordHash::new(secret)
            .map(|_| ())
            .map_err(|e| format!("malformed argon2 hash: {e}"))
    } else if is_bcrypt(secret) {
        // `$2b$NN$` + 53 characters of salt and hash.
        let cost_ok = secret
            .get(4..6)
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|c| (4..=31).contains(&c));
        if secret.len() == 60 && cost_ok && secret.as_bytes()[6] == b'$' {
            Ok(())
        } else {
            Err("malformed bcrypt hash (expected 60 characters like `$2b$12$...`)".to_string())
        }
    } else {
        Ok(())
    }
}

/// Checks `password` against a stored hash. Slow on purpose; call it off the loop.
pub fn verify(password: &str, hash: &str) -> bool {
    use argon2::password_hash::PasswordVerifier;
    if hash.starts_with("$argon2") {
        argon2::password_hash::phc::PasswordHash::new(hash).is_ok_and(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
    } else {
        bcrypt::verify(password, hash).unwrap_or(false)
    }
}

/// An argon2id hash of `password` with a fresh random salt and the default parameters
/// (19 MiB, 2 passes, 1 lane: OWASP's recommendation).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Constant-time comparison of plain passwords (in the contents; lengths may differ
/// observably, which reveals nothing a wrong guess does not).
pub fn plain_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod hash_tests {
    use super::*;

    #[test]
    fn argon2_and_bcrypt_hashes_verify_and_malformed_ones_are_refused() {
        let h = hash_password("falcon*solo").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(is_hashed(&h));
        assert!(verify("falcon*solo", &h));
        assert!(!verify("falcon*sol0", &h));
        let b = bcrypt::hash("wise@!man", 4).unwrap();
        assert!(is_hashed(&b) && check_secret(&b).is_ok());
        assert!(verify("wise@!man", &b));
        assert!(!verify("wise@!ma", &b));
        let text = format!("hans {h}\nyoda {b}\nleia princess$1\n");
        let creds = parse(Path::new("c.txt"), text.as_bytes()).unwrap();
        assert_eq!(creds.len(), 3);
        let bad = parse(Path::new("c.txt"), b"hans $argon2id$v=19$broken\n").unwrap_err();
        assert!(
            bad.to_string()
                .starts_with("c.txt:1: malformed argon2 hash"),
            "{bad}"
        );
        let bad = parse(Path::new("c.txt"), b"x y\nhans $2b$12$short\n").unwrap_err();
        assert!(
            bad.to_string()
                .starts_with("c.txt:2: malformed bcrypt hash"),
            "{bad}"
        );
        assert!(plain_eq("abc", "abc") && !plain_eq("abc", "abd") && !plain_eq("abc", "ab"));
    }
}
